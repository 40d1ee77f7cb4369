"""Latency sampling shared by the read benchmarks (search.py, catalog.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable


async def timed(runs: int, call: Callable[[int], Awaitable[object]]) -> tuple[float, float, float]:
    """p50, p95 and max in ms of ``runs`` calls (after 5 warm-up calls)."""
    for n in range(5):
        await call(n)
    samples = []
    for n in range(runs):
        started = time.perf_counter()
        await call(n)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.95) - 1)], samples[-1]
