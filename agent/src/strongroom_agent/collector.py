"""The agent's cyclic garbage collector settings (ADR 0076).

CPython's collector runs in whichever thread allocates the object that
crosses its threshold, holding the GIL: while it walks the heap, the event
loop and every job thread wait. With the defaults (a young collection every
700 net container allocations, a full one every 100 young ones once the old
objects grew by a quarter) a full restore of the benchmark tree spent
0.35-1.0 s of the agent's CPU in collections, most of it in full ones that
traverse everything start-up made (grpc, protobuf and the agent's modules),
which is never garbage.

``tune_collector`` moves the start-up heap out of the collector's sight
(``gc.freeze``) and makes young collections rarer. Memory stays bounded:
reference counting frees every object that is not in a cycle at once, as
before, and the collector still runs, only after ``GEN0_THRESHOLD`` net
container allocations instead of 700; the cycles a job makes (a task and its
future, an exception and its frame) wait that many allocations longer at
most, their count bounded by the threshold, not by time.
"""

from __future__ import annotations

import gc

# Net container allocations between young collections (CPython's default: 700).
GEN0_THRESHOLD = 20_000


def tune_collector(gen0_threshold: int = GEN0_THRESHOLD) -> None:
    """Freeze the heap start-up made and collect young objects every ``gen0_threshold`` allocations.

    Called once by the agent's entry point after start-up, before the jobs
    run; never at import. The older generations' thresholds are left as they are.
    """
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
