"""A byte-rate limit on reads, on the injected clock."""

from __future__ import annotations

import asyncio

from strongroom_platform.clock import Clock


class ReadRate:
    """At most ``bytes_per_second`` on average (0: unlimited), bursts up to ``burst`` bytes.

    ``acquire(n)`` takes ``n`` bytes of allowance, first come first served, and sleeps off any
    debt before returning, so a read of ``n`` bytes starts only once the rate allows it.
    """

    def __init__(self, clock: Clock, bytes_per_second: float, *, burst: int = 16 << 20) -> None:
        if bytes_per_second < 0:
            raise ValueError("a rate is not negative")
        self._clock = clock
        self._rate = bytes_per_second
        self._burst = burst
        self._tokens = float(burst)
        self._last = clock.now()
        self._lock = asyncio.Lock()

    @property
    def bytes_per_second(self) -> float:
        return self._rate

    async def acquire(self, n: int) -> None:
        if self._rate <= 0:
            return
        async with self._lock:
            now = self._clock.now()
            elapsed = (now - self._last).total_seconds()
            self._last = now
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate) - n
            if self._tokens < 0:
                await self._clock.sleep(-self._tokens / self._rate)
