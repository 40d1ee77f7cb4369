"""Pruning the alert pipeline's history (ADR 0037, update of 2026-12-06).

Finished deliveries (delivered or dead) and read in-app messages are deleted once they are older
than ``keep`` (``STRONGROOM_ALERT_KEEP_DAYS``, default 90) by the scheduler's clock: a delivery by
when it finished, a message by when it was read. Unread messages and pending deliveries are kept
whatever their age, and a message stays while any delivery still refers to it. Rows go in batches
of ``batch``, one short transaction each, so a backlog of millions never holds a long lock or a
large result in memory; replicas skip each other's rows (``SKIP LOCKED``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from strongroom_platform.clock import Clock

from strongroom_scheduler.alerts.ports import AlertStore
from strongroom_scheduler.pruning import drain, run_every

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class PrunePolicy:
    """Keep ``keep`` of history; delete ``batch`` rows per transaction; a pass every ``interval`` seconds."""

    keep: dt.timedelta = dt.timedelta(days=90)
    batch: int = 1000
    interval: float = 3600.0

    def __post_init__(self) -> None:
        if self.keep < dt.timedelta(days=1) or self.batch < 1 or self.interval <= 0:
            raise ValueError("keep at least one day, batch >= 1, interval > 0")


@dataclasses.dataclass(slots=True)
class Pruned:
    deliveries: int = 0
    messages: int = 0


async def prune_alerts(store: AlertStore, clock: Clock, policy: PrunePolicy) -> Pruned:
    """Delete the history older than ``policy.keep``: deliveries first, so that the messages they
    held become prunable in the same pass."""
    before = clock.now() - policy.keep
    pruned = Pruned(
        deliveries=await drain(store, lambda tx: tx.prune_deliveries(before, policy.batch), policy.batch),
    )
    pruned.messages = await drain(store, lambda tx: tx.prune_messages(before, policy.batch), policy.batch)
    if pruned.deliveries or pruned.messages:
        log.info(
            "alerts: pruned %d finished deliveries and %d read messages older than %s",
            pruned.deliveries,
            pruned.messages,
            before.isoformat(timespec="seconds"),
        )
    return pruned


async def run_prune_loop(store: AlertStore, clock: Clock, policy: PrunePolicy) -> None:
    """Prune every ``policy.interval`` seconds until cancelled; a failed pass is logged and retried."""
    await run_every(clock, policy.interval, lambda: prune_alerts(store, clock, policy), "alert pruning")
