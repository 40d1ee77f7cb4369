"""Held backups whose start window closed are skipped, not started late (ADR 0053, session 6).

A gateway replica with ``STRONGROOM_GATEWAY_MAX_RUNNING_BACKUPS`` holds a backup job until one of
its slots frees (``admission.BackupSlots``). A scheduled job carries the end of its start window
(``Job.start_before``: its slot time + ``STRONGROOM_ADMISSION_WINDOW``, set by the scheduler). One
still held when that passes ends as the seed's skipped backup, exactly as a slot the scheduler could
not start within the window: the job finishes ``EXPIRED`` with the reason, the ``job-updated``
event tells the scheduler, which records it and raises the ``BACKUP_SKIPPED`` alert (messages,
webhooks, email; ADR 0037) and no longer counts it as running (overview, fleet cap). The job
never reaches its agent afterwards: it is finished, and the slots never grant it one meanwhile.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from strongroom.common.v1 import common_pb2
from strongroom_platform import lifecycle
from strongroom_platform.clock import Clock

from strongroom_gateway.admission import BackupSlots
from strongroom_gateway.jobs import finish_job
from strongroom_gateway.ports import GatewayStore, Job

__all__ = ["SKIPPED_STATUS", "run_held_skips", "skip_held_past_window", "skip_reason", "start"]

log = logging.getLogger(__name__)

SKIPPED_STATUS = common_pb2.JOB_STATUS_EXPIRED
"""The final status of a backup skipped because its start window closed while it was held."""


def skip_reason(job: Job, limit: int) -> str:
    """What the skipped backup's alert says: what happened and what to do."""
    closed = job.start_before.strftime("%Y-%m-%d %H:%M UTC") if job.start_before is not None else "its window's end"
    return (
        f"the backup was skipped: this gateway replica's {limit} backup slots "
        f"(STRONGROOM_GATEWAY_MAX_RUNNING_BACKUPS) stayed busy until its start window closed at {closed}; "
        "raise the cap, add gateway replicas or spread the instances' backup times"
    )


async def skip_held_past_window(slots: BackupSlots, store: GatewayStore, clock: Clock) -> list[str]:
    """Skip every held job whose start window has closed; return the ids of those skipped.

    Each job is finished in its own transaction, only if it is still queued and not being
    cancelled (another replica may have delivered it meanwhile: then it runs there).
    """
    skipped: list[str] = []
    for session, held in slots.past_window():
        async with store.transaction() as tx:
            job = await tx.get_job(held.job_id, for_update=True)
            if job is not None and job.state == "queued" and not job.cancel_requested:
                await finish_job(tx, job, SKIPPED_STATUS, clock, error=skip_reason(held, slots.limit))
                skipped.append(job.job_id)
        slots.drop_held(session, held.job_id)
    if skipped:
        log.warning("skipped %d held backup job(s) whose start window closed: %s", len(skipped), ", ".join(skipped))
    return skipped


async def run_held_skips(slots: BackupSlots, store: GatewayStore, clock: Clock, *, interval: float = 10.0) -> None:
    """:func:`skip_held_past_window` every ``interval`` seconds of ``clock`` until cancelled; a
    failure (database unreachable) is logged and retried on the next round."""
    while True:
        try:
            await skip_held_past_window(slots, store, clock)
        except Exception:
            log.exception("skipping held backups past their window failed; retrying")
        await clock.sleep(interval)


def start(stack: AsyncExitStack, slots: BackupSlots, store: GatewayStore, clock: Clock) -> None:
    """Run :func:`run_held_skips` on ``stack`` when ``slots`` has a cap (without one nothing is held)."""
    if slots.limit > 0:
        lifecycle.start_task(stack, run_held_skips(slots, store, clock), "held backups past their window")
