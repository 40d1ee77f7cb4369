"""Latency sampling shared by the read benchmarks (search.py, catalog.py), and the one percentile
helper every benchmark prints with (sessions.py and its probe, fleet.py's report)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1): the smallest sample with at least ``q`` of the
    samples at or below it, i.e. sorted ``values[ceil(q * n) - 1]``; NaN for no samples.

    One method for every figure the benchmarks print, so their p95s compare: 1,000 samples give the
    950th, 200 the 190th, 4 the 4th (the maximum: fewer than 20 samples have no p95 below it).
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def timed(runs: int, call: Callable[[int], Awaitable[object]]) -> tuple[float, float, float]:
    """p50, p95 and max in ms of ``runs`` calls (after 5 warm-up calls)."""
    for n in range(5):
        await call(n)
    samples = []
    for n in range(runs):
        started = time.perf_counter()
        await call(n)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), percentile(samples, 0.95), max(samples)
