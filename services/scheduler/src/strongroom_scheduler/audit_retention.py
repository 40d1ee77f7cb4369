"""Retention of the audit trail (ADR 0057).

Audit records (ADR 0027) are kept ``keep`` (``STRONGROOM_AUDIT_KEEP_DAYS``, default 400: a year of
history, as PCI DSS 10.5.1 and a SOC 2 type II observation period ask, plus five weeks so the whole
previous year is still there when the yearly review reads it) and then deleted in batches of
``batch``, one short transaction each, by ``scheduler.prune_audit_events``: the cut-off is the
database's trusted time (ADR 0031) minus ``keep``, never this process's clock, and the function
refuses to keep less than :data:`MIN_AUDIT_KEEP`, so the scheduler's credential cannot erase recent
history.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from strongroom_platform.clock import Clock

from strongroom_scheduler.ports import SchedulerStore
from strongroom_scheduler.pruning import drain, run_every

log = logging.getLogger(__name__)

MIN_AUDIT_KEEP = dt.timedelta(days=90)
"""The least the database function keeps (PCI DSS's "immediately available" three months)."""


@dataclasses.dataclass(frozen=True, slots=True)
class AuditRetention:
    """Keep ``keep`` of the trail; delete ``batch`` records per transaction; a pass every ``interval`` seconds."""

    keep: dt.timedelta = dt.timedelta(days=400)
    batch: int = 1000
    interval: float = 3600.0

    def __post_init__(self) -> None:
        if self.keep < MIN_AUDIT_KEEP or not 1 <= self.batch <= 10000 or self.interval <= 0:
            raise ValueError("keep at least 90 days, batch between 1 and 10000, interval > 0")


async def prune_audit(store: SchedulerStore, policy: AuditRetention) -> int:
    """Delete every audit record older than ``policy.keep`` by the trusted time; returns how many."""
    pruned = await drain(store, lambda tx: tx.prune_audit_events(policy.keep, policy.batch), policy.batch)
    if pruned:
        log.info("audit: pruned %d records older than %d days", pruned, policy.keep.days)
    return pruned


async def run_audit_prune_loop(store: SchedulerStore, clock: Clock, policy: AuditRetention) -> None:
    """Prune every ``policy.interval`` seconds (slept on ``clock``) until cancelled."""
    await run_every(clock, policy.interval, lambda: prune_audit(store, policy), "audit pruning")
