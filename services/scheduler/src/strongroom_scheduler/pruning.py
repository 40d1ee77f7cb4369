"""Batched deletion of old history, shared by the alert pipeline's pruning (ADR 0037) and the audit
trail's retention (ADR 0057): one short transaction per batch, and a pass every interval."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

from strongroom_platform.clock import Clock

log = logging.getLogger(__name__)

Tx = TypeVar("Tx")
Tx_co = TypeVar("Tx_co", covariant=True)


class Transactional(Protocol[Tx_co]):
    def transaction(self) -> AbstractAsyncContextManager[Tx_co]: ...


async def drain(store: Transactional[Tx], prune: Callable[[Tx], Awaitable[int]], batch: int) -> int:
    """Run ``prune`` (deleting at most ``batch`` rows) in one transaction after another until a short one."""
    total = 0
    while True:
        async with store.transaction() as tx:
            n = await prune(tx)
        total += n
        if n < batch:
            return total


async def run_every(clock: Clock, interval: float, step: Callable[[], Awaitable[object]], what: str) -> None:
    """Run ``step`` every ``interval`` seconds until cancelled; a failed pass is logged and retried."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; retrying in %.0fs", what, interval)
        await clock.sleep(interval)
