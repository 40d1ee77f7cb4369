"""A thread-safe token bucket limiting how many bytes a backup reads per second.

The readers run in worker threads, so ``acquire`` blocks the calling thread.
Time comes from injected ``monotonic``/``sleep`` functions so the rate can be
tested without sleeping for real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class ReadThrottle(Protocol):
    """Called by a reader after it read ``nbytes``; blocks while the reader is ahead of its budget."""

    def acquire(self, nbytes: int) -> None: ...


class Unlimited:
    """No limit (``max_read_bytes_per_second == 0``)."""

    def acquire(self, nbytes: int) -> None:
        return None


class TokenBucket:
    """``rate`` bytes per second on average, with bursts of up to ``burst`` bytes.

    A request larger than the bucket is allowed and puts the bucket into debt:
    the caller sleeps until the debt is paid back, so the long-run rate is
    exact regardless of request sizes. Concurrent callers each reserve their
    bytes under the lock and sleep outside it, so they queue fairly.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        # Default burst: a quarter second of reading, at least 64 KiB.
        self.burst = float(burst) if burst is not None else max(self.rate / 4, 65536.0)
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = monotonic()

    def reserve(self, nbytes: int) -> float:
        """Take ``nbytes`` from the bucket; return how long the caller must wait before using them."""
        with self._lock:
            now = self._monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= nbytes
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self, nbytes: int) -> None:
        delay = self.reserve(nbytes)
        if delay > 0:
            self._sleep(delay)


def make_throttle(max_read_bytes_per_second: int) -> ReadThrottle:
    """The throttle for a job: unlimited when the rate is 0."""
    if max_read_bytes_per_second <= 0:
        return Unlimited()
    return TokenBucket(max_read_bytes_per_second)
