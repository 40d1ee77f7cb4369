"""A service process's cyclic garbage collector: the start-up heap frozen (ADR 0076).

CPython's full collections traverse every object the process holds, holding
the GIL; in the gateway most of them are what start-up made (grpc, protobuf,
asyncpg, the service's modules), which is never garbage. A full restore of
the benchmark tree made three full collections in the gateway, ~0.09 s each.
"""

from __future__ import annotations

import gc


def freeze_start_up_heap() -> None:
    """Free what start-up left as garbage, then freeze the rest: no collection traverses it again.

    Called by a service's entry point once its modules are imported, before it
    serves; never at import. The thresholds stay CPython's, so garbage cycles
    are found as soon as before; frozen objects are still freed by reference
    counting when their last reference goes.
    """
    gc.collect()
    gc.freeze()
