"""Benchmark probe, never installed: the cyclic garbage collector's CPU time in a process, per generation.

``bench/restore_ab.py --gc-probe`` starts the agent and the gateway with this directory on their
``PYTHONPATH`` and ``BENCH_GC_PROBE`` naming a file; Python then imports this module at start-up.
Every collection's CPU time (``time.thread_time``: the collection runs whole in the thread that
triggered it, holding the GIL) and the objects it found unreachable are added up per generation,
and a thread rewrites the file (write, then rename: never read half-written) every 0.2 s with one
JSON object ``{"0": [collections, cpu seconds, unreachable], "1": [...], "2": [...]}``; the
benchmark reads it before and after each restore. Without ``BENCH_GC_PROBE`` nothing is changed.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time

_PATH = os.environ.get("BENCH_GC_PROBE")

if _PATH:
    _totals: dict[int, list[float]] = {0: [0, 0.0, 0], 1: [0, 0.0, 0], 2: [0, 0.0, 0]}
    _started = [0.0]

    def _callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _started[0] = time.thread_time()
            return
        totals = _totals[info["generation"]]
        totals[0] += 1
        totals[1] += time.thread_time() - _started[0]
        totals[2] += info.get("collected", 0) + info.get("uncollectable", 0)

    def _writer(path: str) -> None:
        temp = f"{path}.{os.getpid()}.tmp"
        while True:
            time.sleep(0.2)
            with open(temp, "w") as out:
                json.dump({str(g): list(v) for g, v in _totals.items()}, out)
            os.replace(temp, path)

    gc.callbacks.append(_callback)
    threading.Thread(target=_writer, args=(_PATH,), daemon=True, name="bench-gc-probe").start()
