"""Backup jobs: starting one by hand, listing, reading and canceling them, and applying their progress.

Contract: ``handle_job_updated`` (idempotent by event id) never changes a finished job nor moves a
job back (CANCELING stays); a finished job updates its instance's status and last error, raises
the alert of a failed or partial backup in the same transaction (ADR 0037) and is counted in the
metrics after the commit (ADR 0039).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform import audit, paging
from strongroom_platform.alerts import account_alert
from strongroom_platform.auth import CallAuth
from strongroom_platform.events import ALERT_RAISED, JOB_CANCEL_REQUESTED, from_timestamp, new_meta
from strongroom_platform.paging import token_position
from strongroom_platform.telemetry import Metrics

from strongroom_scheduler import status
from strongroom_scheduler.errors import FailedPrecondition
from strongroom_scheduler.handlers.common import CONSUMER, Deps, active_instance, authorized_instance, authorized_job
from strongroom_scheduler.jobs import PRODUCER, start_job
from strongroom_scheduler.models import (
    FINISHED_JOB_STATUSES,
    SUCCESSFUL_JOB_STATUSES,
    TRIGGER_MANUAL,
    UNFINISHED_JOB_STATUSES,
    Instance,
    Job,
    job_status_name,
)
from strongroom_scheduler.ports import SchedulerTx

log = logging.getLogger(__name__)

DEFAULT_JOB_LIMIT = 50
MAX_JOB_LIMIT = 1000


async def run_backup_now(deps: Deps, instance_id: str, *, call: CallAuth) -> Job:
    """Start a manual backup job; the instance must be enrolled, active and idle."""
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        instance = await active_instance(tx, instance_id, call=call)
        if not instance.activated:
            raise FailedPrecondition(f"backup of instance {instance_id} is not activated; activate it first")
        if instance.released:
            raise FailedPrecondition(f"the inventory says instance {instance_id} is gone; its backups stopped")
        if instance.paused:
            raise FailedPrecondition(f"backup of instance {instance_id} is paused; resume it first")
        if not instance.enrolled:
            raise FailedPrecondition(
                f"the agent of instance {instance_id} has not enrolled yet; install and enroll it first"
            )
        unfinished = await tx.unfinished_jobs(instance.instance_id)
        if unfinished:
            job = unfinished[0]
            raise FailedPrecondition(
                f"backup job {job.job_id} of instance {instance_id} is still {job_status_name(job.status)}; "
                "wait for it to finish or cancel it"
            )
        job = await start_job(tx, instance, TRIGGER_MANUAL, now)
        audit.note(job_id=job.job_id)
        return job


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[Job]
    next_page_token: str  # empty on the last page


async def list_jobs(
    deps: Deps, instance_id: str, page_size: int = 0, *, page_token: str = "", call: CallAuth
) -> JobPage:
    """One page of the instance's jobs, newest first; ``page_size`` 0 = the default (50)."""
    size = paging.page_size(page_size, DEFAULT_JOB_LIMIT, MAX_JOB_LIMIT)
    after = token_position(page_token)
    async with deps.store.transaction() as tx:
        instance = await authorized_instance(tx, instance_id, call=call)
        found = await tx.list_jobs(instance.instance_id, size + 1, after=after)
    return JobPage(*paging.keyset_page(found, size, lambda j: (j.created_at, j.job_id)))


async def get_job(deps: Deps, job_id: str, *, call: CallAuth) -> Job:
    async with deps.store.transaction() as tx:
        return await authorized_job(tx, job_id, call=call)


async def cancel_job(deps: Deps, job_id: str, *, call: CallAuth) -> Job:
    """Cancel an unfinished job.

    A queued job is canceled at once; a running one becomes CANCELING until
    the agent confirms. Both ask the gateway to stop it (``job-cancel-requested``).
    Canceling a CANCELING job again changes nothing.
    """
    now = deps.clock.now()
    async with deps.store.transaction() as tx:
        job = await authorized_job(tx, job_id, call=call, for_update=True)
        if job.finished:
            raise FailedPrecondition(f"backup job {job_id} already finished ({job_status_name(job.status)})")
        if job.status == common_pb2.JOB_STATUS_CANCELING:
            return job
        if job.status == common_pb2.JOB_STATUS_RUNNING:
            job.status = common_pb2.JOB_STATUS_CANCELING
        else:
            job.status = common_pb2.JOB_STATUS_CANCELED
            job.error = "canceled by the operator before it started"
            job.finished_at = now
        await tx.update_job(job)
        event = events_pb2.JobCancelRequested(
            meta=new_meta(PRODUCER, now), account_id=job.account_id, instance_id=job.instance_id, job_id=job.job_id
        )
        await tx.enqueue(JOB_CANCEL_REQUESTED, job.instance_id, event)
        return job


async def handle_job_updated(event: events_pb2.JobUpdated, deps: Deps) -> None:
    """Apply a job's progress or result, and the instance's running status. Idempotent.

    A finished job never changes again, and a CANCELING job is not moved back
    to RUNNING. A FAILED result records the instance's last error; FAILED,
    PARTIAL_COMPLETE and EXPIRED (skipped) raise an alert (``alert-raised``, in the same transaction).
    """
    ended: Job | None = None
    async with deps.store.transaction() as tx:
        if not await tx.claim_event(CONSUMER, event.meta.event_id):
            return
        job = await tx.get_job(event.job_id, for_update=True)
        if job is None:
            log.warning("job-updated for unknown job %s ignored", event.job_id)
            return
        new_status = int(event.status)
        if job.finished:
            log.info(
                "job-updated %s for finished job %s (%s) ignored",
                job_status_name(new_status),
                job.job_id,
                job_status_name(job.status),
            )
            return
        if new_status not in UNFINISHED_JOB_STATUSES | FINISHED_JOB_STATUSES:
            log.warning("job-updated for job %s with invalid status %d ignored", job.job_id, new_status)
            return
        finished = new_status not in UNFINISHED_JOB_STATUSES
        if finished or not _is_backwards(job.status, new_status):
            job.status = new_status
        job.stats.CopyFrom(event.stats)
        if event.error:
            job.error = event.error
        if event.version_id:
            job.version_id = event.version_id
        if event.file_errors:
            job.file_errors = list(event.file_errors)
        if finished:
            has_time = event.meta.HasField("occurred_at")
            job.finished_at = from_timestamp(event.meta.occurred_at) if has_time else deps.clock.now()
        await tx.update_job(job)
        instance = await tx.get_instance(job.instance_id, for_update=True)
        if instance is not None:
            now = deps.clock.now()
            before = instance.status(now)
            instance.backing_up = job.status in (common_pb2.JOB_STATUS_RUNNING, common_pb2.JOB_STATUS_CANCELING)
            if event.agent_version:
                instance.agent_version = event.agent_version
            if job.status in SUCCESSFUL_JOB_STATUSES:
                instance.succeeded_once = True
                instance.last_error = ""
            elif job.status == common_pb2.JOB_STATUS_FAILED:
                instance.last_error = job.error or "backup job failed"
            await status.save(tx, instance, before, now)
            await _alert_finished_job(tx, instance, job, now)
        ended = job if finished else None
    if ended is not None:
        record_finished_backup(deps.metrics, ended)


MAX_ALERT_FILE_ERRORS = 5


async def _alert_finished_job(tx: SchedulerTx, instance: Instance, job: Job, now: dt.datetime) -> None:
    """Raise the alert of a failed or partially completed backup job (ADR 0037), or of one a gateway
    replica held for a free backup slot until its start window closed (EXPIRED: the seed's skipped
    backup, alerted as the schedule's own skipped slots are; ADR 0053)."""
    if job.status == common_pb2.JOB_STATUS_EXPIRED:
        kind = events_pb2.ALERT_KIND_BACKUP_SKIPPED
        reason = job.error or "the backup was skipped: it could not start within its window"
    elif job.status == common_pb2.JOB_STATUS_FAILED:
        kind = events_pb2.ALERT_KIND_BACKUP_FAILED
        reason = job.error or "backup job failed"
    elif job.status == common_pb2.JOB_STATUS_PARTIAL_COMPLETE:
        kind = events_pb2.ALERT_KIND_BACKUP_PARTIAL
        failed = job.stats.files_failed or len(job.file_errors)
        reason = f"{failed} file(s) could not be backed up; version {job.version_id or '(none)'} lacks them"
        if job.file_errors:
            shown = "; ".join(job.file_errors[:MAX_ALERT_FILE_ERRORS])
            more = len(job.file_errors) - MAX_ALERT_FILE_ERRORS
            reason += f": {shown}" + (f"; and {more} more (strongroom jobs get {job.job_id})" if more > 0 else "")
    else:
        return
    alert = account_alert(
        kind,
        producer=PRODUCER,
        now=now,
        account_id=instance.account_id,
        instance_id=instance.instance_id,
        instance_name=instance.name,
        job_id=job.job_id,
        reason=reason,
    )
    await tx.enqueue(ALERT_RAISED, instance.instance_id, alert)


def record_finished_backup(metrics: Metrics, job: Job) -> None:
    """Count a finished backup: its status and duration, its bytes, its instance's last success."""
    duration = (job.finished_at - job.created_at).total_seconds() if job.finished_at is not None else None
    metrics.job_finished("backup", job_status_name(job.status), duration)
    succeeded = job.status in SUCCESSFUL_JOB_STATUSES
    stats = job.stats
    metrics.backup_bytes(
        read=stats.bytes_read, unchanged=stats.bytes_unchanged, uploaded=stats.bytes_uploaded, ratio=succeeded
    )
    if succeeded and job.finished_at is not None:
        metrics.last_success.set(job.finished_at.timestamp(), {"instance_id": job.instance_id})


_PROGRESS_ORDER: dict[int, int] = {
    common_pb2.JOB_STATUS_CREATED: 0,
    common_pb2.JOB_STATUS_QUEUED: 1,
    common_pb2.JOB_STATUS_RUNNING: 2,
    common_pb2.JOB_STATUS_CANCELING: 3,
}


def _is_backwards(current: int, new: int) -> bool:
    """True if an unfinished status would move the job back (e.g. CANCELING -> RUNNING)."""
    return _PROGRESS_ORDER.get(new, 0) < _PROGRESS_ORDER.get(current, 0)
