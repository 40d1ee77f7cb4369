"""Token bucket with a fake clock: no real sleeping."""

from __future__ import annotations

import threading

import pytest
from strongroom_agent.throttle import TokenBucket, Unlimited, make_throttle


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            self.slept += seconds


@pytest.mark.parametrize(("rate", "piece"), [(10_000_000, 65536), (30_000_000, 4 << 20), (1_000_000, 1000)])
def test_rate_is_honoured_within_two_percent(rate: int, piece: int) -> None:
    clock = FakeTime()
    bucket = TokenBucket(rate, monotonic=clock.monotonic, sleep=clock.sleep)
    total = rate * 20  # twenty seconds' worth
    start = clock.now
    sent = 0
    while sent < total:
        bucket.acquire(piece)
        sent += piece
    elapsed = clock.now - start
    achieved = sent / elapsed
    assert abs(achieved - rate) / rate < 0.02, achieved


def test_burst_is_free_then_limited() -> None:
    clock = FakeTime()
    bucket = TokenBucket(1000, burst=500, monotonic=clock.monotonic, sleep=clock.sleep)
    bucket.acquire(500)
    assert clock.slept == 0
    bucket.acquire(1000)
    assert clock.slept == pytest.approx(1.0)


def test_idle_time_refills_only_up_to_burst() -> None:
    clock = FakeTime()
    bucket = TokenBucket(1000, burst=500, monotonic=clock.monotonic, sleep=clock.sleep)
    clock.now += 3600  # an hour idle earns no more than the burst
    bucket.acquire(1500)
    assert clock.slept == pytest.approx(1.0)


def test_concurrent_callers_share_the_rate() -> None:
    clock = FakeTime()
    bucket = TokenBucket(1000, burst=1, monotonic=clock.monotonic, sleep=lambda _s: None)
    waits: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            w = bucket.reserve(100)
            with lock:
                waits.append(w)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 4000 bytes reserved at one instant: the last reservation waits ~4 s.
    assert max(waits) == pytest.approx(4.0 - 1 / 1000)


def test_zero_rate_means_unlimited() -> None:
    assert isinstance(make_throttle(0), Unlimited)
    assert isinstance(make_throttle(10), TokenBucket)
    with pytest.raises(ValueError):
        TokenBucket(0)


@pytest.mark.parametrize("pauses", [False, True])
@pytest.mark.parametrize("rate", [10_000_000, 30_000_000])
def test_bursty_reads_stay_within_ten_percent_over_every_sixty_second_window(rate: int, pauses: bool) -> None:
    """Reads of random sizes (4 KiB .. 8 MiB): every 60 s window, wherever it starts, holds at most
    rate × 60 s + 10 % (plus one burst); an eager reader also gets at least rate × 60 s - 10 %. With idle
    gaps (the reader busy elsewhere) only the ceiling can hold, and idle time is not saved up beyond the burst."""
    import random

    clock = FakeTime()
    bucket = TokenBucket(rate, monotonic=clock.monotonic, sleep=clock.sleep)
    rng = random.Random(rate)
    events: list[tuple[float, int]] = []  # (time the bytes were handed to the reader, bytes)
    while clock.now < 1000.0 + 300:
        size = rng.choice([4096, 65536, 1 << 20, 4 << 20, 8 << 20])
        bucket.acquire(size)
        events.append((clock.now, size))
        if pauses and rng.random() < 0.1:
            clock.sleep(rng.uniform(0.0, 0.5))  # a short pause: bursts must not be "saved up" beyond the bucket
    for start in range(1000, 1000 + 240, 7):
        window = sum(n for t, n in events if start <= t < start + 60)
        expected = rate * 60
        assert window <= expected * 1.10 + bucket.burst, (start, window / 60)
        if not pauses:
            assert window >= expected * 0.90 - bucket.burst, (start, window / 60)
