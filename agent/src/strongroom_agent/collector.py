"""The agent's cyclic garbage collector settings (ADR 0076).

CPython's collector runs in whichever thread allocates the object that
crosses its threshold, holding the GIL: while it walks the heap, the event
loop and every job thread wait. With CPython's thresholds a full restore of
the benchmark tree spent ~0.5 s of the agent's CPU in ~700 collections: six
full ones (0.3 s) that traverse every object the process holds, most of it
what start-up made (grpc, protobuf and the agent's modules), which is never
garbage, and ~60 middle ones (0.1 s).

``tune_collector`` moves the start-up heap out of the collector's sight
(``gc.freeze``) and collects young objects every ``GEN0_THRESHOLD`` net
container allocations instead of 700: ~12 collections per restore, 0.14 s.
Memory stays bounded: reference counting still frees every object outside a
cycle at once, and a garbage cycle waits at most that many allocations for
its collection (counted, not timed).
"""

from __future__ import annotations

import gc

# Net container allocations between young collections (CPython's default: 700).
GEN0_THRESHOLD = 20_000


def tune_collector(gen0_threshold: int = GEN0_THRESHOLD) -> None:
    """Free what start-up left as garbage, freeze the rest, and collect young objects every ``gen0_threshold``.

    Called once by the agent's entry point after start-up, before the jobs
    run; never at import. Frozen objects are still freed by reference
    counting when their last reference goes; the older generations'
    thresholds stay CPython's.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
