"""The restore service's logic: creating, reading and cancelling jobs, and applying agent updates.

Plain functions over the ports, unit-tested with the in-memory fakes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.restore.v1 import restore_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_platform import audit, paging
from strongroom_platform.alerts import account_alert
from strongroom_platform.auth import CallAuth, authorize, visible_accounts
from strongroom_platform.clock import Clock
from strongroom_platform.eventbus import PoisonRecord
from strongroom_platform.events import (
    ALERT_RAISED,
    RESTORE_CANCEL_REQUESTED,
    RESTORE_REQUESTED,
    from_timestamp,
    new_meta,
)
from strongroom_platform.telemetry import instruments

from strongroom_restore import paths
from strongroom_restore.errors import FailedPrecondition, InvalidArgument, NotFound
from strongroom_restore.model import (
    FINISHED,
    CatalogPoint,
    InstanceFacts,
    RestoreJob,
    is_known_status,
    rank,
    status_name,
)
from strongroom_restore.ports import CatalogClient, InstanceDirectory, RestoreStore

log = logging.getLogger(__name__)

PRODUCER = "restore"
RESTORE_UPDATED_CONSUMER = "restore.restore-updated"
DEACTIVATED_CONSUMER = "restore.instance-deactivated"
REINSTATED_CONSUMER = "restore.instance-reinstated"
DEFAULT_LIST_PAGE = 500  # what the list returned before it had pages
MAX_LIST_PAGE = 1000
_POLICIES = {gateway_pb2.CONFLICT_POLICY_SKIP, gateway_pb2.CONFLICT_POLICY_OVERWRITE}


def _new_id() -> str:
    return str(uuid.uuid4())


def _no_restore_job(restore_job_id: str) -> Callable[[], NotFound]:
    return lambda: NotFound(f"restore job {restore_job_id!r} not found")


async def _target(
    point: CatalogPoint, target_id: str, *, instances: InstanceDirectory
) -> tuple[InstanceFacts, InstanceFacts]:
    """The target instance and the point's own, once the target may receive the point's files.

    A target of another account than the point's, or an unknown one, is NotFound (no oracle: the
    caller holds the point's account, not necessarily the target's). One in another region, whose
    backup was canceled (agent revoked), stopped, or without an enrolled agent is FailedPrecondition:
    such a job could never leave QUEUED.
    """
    target = await instances.get_instance(target_id)
    if target is None or target.account_id != point.account_id:
        raise NotFound(f"instance {target_id} not found")
    source = target if target_id == point.instance_id else await instances.get_instance(point.instance_id)
    if source is None:
        raise FailedPrecondition(
            f"instance {point.instance_id} of point {point.point_id!r} is unknown to the scheduler, so the "
            "point's region cannot be checked"
        )
    if target.region != source.region:
        raise FailedPrecondition(
            f"instance {target_id} is in region {target.region}, but point {point.point_id!r} was backed up in "
            f"region {source.region}; restore onto an instance of region {source.region}"
        )
    if target.status == scheduler_pb2.RUNNING_STATUS_CANCELED:
        raise FailedPrecondition(
            f"backup of instance {target_id} was canceled and its agent revoked; restore onto an instance "
            "with an active agent"
        )
    if target.status == scheduler_pb2.RUNNING_STATUS_STOPPED:
        raise FailedPrecondition(f"instance {target_id} is stopped; start it and try again")
    if not target.enrolled:
        raise FailedPrecondition(f"the agent of instance {target_id} has not enrolled yet; install and enroll it first")
    return target, source


async def create_restore_job(
    request: restore_pb2.CreateRestoreJobRequest,
    *,
    repo: RestoreStore,
    catalog: CatalogClient,
    instances: InstanceDirectory,
    clock: Clock,
    call: CallAuth,
    new_id: Callable[[], str] = _new_id,
) -> RestoreJob:
    """Validate the request, check the point and the target, store the job and request the restore.

    The point must be of one of the caller's accounts (else the NotFound of an unknown point); the
    target (default: the point's own instance) must be of the point's account, in its region, not
    stopped, with an enrolled agent (see ``_target``). Restoring onto another instance without a
    ``target_path`` writes at the point's original absolute paths there: it needs
    ``confirm_original_path_on_other_instance`` and is recorded in the audit log.

    The job is stored QUEUED and ``restore-requested`` (keyed by the target
    instance) is enqueued in the same transaction. The conflict policy defaults to SKIP.
    """
    if not request.point_id:
        raise InvalidArgument("point_id is required")
    include = tuple(paths.relative_path(p, "include_paths") for p in request.include_paths)
    exclude = tuple(paths.relative_path(p, "exclude_paths") for p in request.exclude_paths)
    target_path = paths.target_path(request.target_path)
    policy = int(request.conflict_policy) or gateway_pb2.CONFLICT_POLICY_SKIP
    if policy not in _POLICIES:
        raise InvalidArgument(f"conflict_policy {policy} is not SKIP or OVERWRITE")

    def point_not_found() -> NotFound:
        return NotFound(f"backup point {request.point_id!r} not found (unknown or expired)")

    point = await catalog.get_point(request.point_id)
    if point is None:
        raise point_not_found()
    authorize(point.account_id, point_not_found, call=call)
    target_id = request.target_instance_id or point.instance_id
    await _target(point, target_id, instances=instances)
    onto_original_path_elsewhere = target_id != point.instance_id and not target_path
    if onto_original_path_elsewhere and not request.confirm_original_path_on_other_instance:
        raise FailedPrecondition(
            f"without a target_path the files are restored onto instance {target_id} at the original paths of "
            f"instance {point.instance_id} (under {point.mount_point or '/'}), overwriting what is there by the "
            "conflict policy; give a target_path, or confirm with confirm_original_path_on_other_instance "
            "(strongroom restore create --confirm-original-path)"
        )
    job = RestoreJob(
        restore_job_id=new_id(),
        account_id=point.account_id,
        point_id=point.point_id,
        source_instance_id=point.instance_id,
        target_instance_id=target_id,
        status=common_pb2.JOB_STATUS_QUEUED,
        include_paths=include,
        exclude_paths=exclude,
        target_path=target_path,
        conflict_policy=policy,
        created_at=clock.now(),
    )
    event = events_pb2.RestoreRequested(
        meta=new_meta(PRODUCER, job.created_at),
        account_id=job.account_id,
        restore_job_id=job.restore_job_id,
        source_instance_id=job.source_instance_id,
        target_instance_id=job.target_instance_id,
        point_id=job.point_id,
        manifest_key=point.manifest_key,
        include_paths=job.include_paths,
        exclude_paths=job.exclude_paths,
        target_path=job.target_path,
        conflict_policy=job.conflict_policy,
        source_mount_point=point.mount_point,
    )
    # The call's audit record (ADR 0027) commits with the job; it names the job, both instances and,
    # for a restore over another instance's original paths, the confirmation its caller gave.
    audit.note(
        restore_job_id=job.restore_job_id,
        source_instance_id=job.source_instance_id,
        target_instance_id=job.target_instance_id,
    )
    if onto_original_path_elsewhere:
        audit.note(original_path_on_other_instance="confirmed", source_mount_point=point.mount_point or "/")
    async with repo.transaction() as tx:
        # The cancel may have reached this service before the catalog hid the point: refuse here too.
        for instance_id in {job.source_instance_id, job.target_instance_id}:
            if await tx.is_canceled(instance_id):
                raise FailedPrecondition(
                    f"backup of instance {instance_id} was canceled: its points cannot be restored and its agent"
                    " was removed; an admin can reinstate it while the versions' locks hold"
                )
        await tx.insert_job(job)
        await tx.enqueue(RESTORE_REQUESTED, job.target_instance_id, event)
    log.info("restore job %s: point %s -> instance %s", job.restore_job_id, job.point_id, target_id)
    return job


async def get_restore_job(repo: RestoreStore, restore_job_id: str, *, call: CallAuth) -> RestoreJob:
    """The job; a job of another account is the NotFound of an unknown id."""
    if not restore_job_id:
        raise InvalidArgument("restore_job_id is required")
    job = await repo.get_job(restore_job_id)
    if job is None:
        raise _no_restore_job(restore_job_id)()
    authorize(job.account_id, _no_restore_job(restore_job_id), call=call)
    return job


@dataclasses.dataclass(frozen=True, slots=True)
class RestoreJobPage:
    jobs: list[RestoreJob]
    next_page_token: str  # empty on the last page


async def list_restore_jobs(
    repo: RestoreStore, instance_id: str, *, page_size: int = 0, page_token: str = "", call: CallAuth
) -> RestoreJobPage:
    """One page of the jobs of the caller's accounts restoring to or from the instance, newest
    first; an instance of another account lists nothing, like an unknown one."""
    if not instance_id:
        raise InvalidArgument("instance_id is required")
    size = paging.page_size(page_size, DEFAULT_LIST_PAGE, MAX_LIST_PAGE)
    after = paging.token_position(page_token)
    found = await repo.list_jobs(instance_id, accounts=visible_accounts(call=call), limit=size + 1, after=after)
    return RestoreJobPage(*paging.keyset_page(found, size, lambda j: (j.created_at, j.restore_job_id)))


async def cancel_restore_job(repo: RestoreStore, restore_job_id: str, *, clock: Clock, call: CallAuth) -> RestoreJob:
    """Ask the agent to stop the job: status CANCELING and ``restore-cancel-requested``.

    Cancelling a job that is already CANCELING changes nothing; a finished job
    cannot be cancelled (FailedPrecondition). A job of another account is the NotFound of an unknown id.
    """
    if not restore_job_id:
        raise InvalidArgument("restore_job_id is required")
    async with repo.transaction() as tx:
        job = await tx.get_job(restore_job_id)
        if job is None:
            raise _no_restore_job(restore_job_id)()
        authorize(job.account_id, _no_restore_job(restore_job_id), call=call)
        if job.finished:
            raise FailedPrecondition(
                f"restore job {restore_job_id!r} already finished ({status_name(job.status)}); it cannot be cancelled"
            )
        if job.status == common_pb2.JOB_STATUS_CANCELING:
            return job
        job = dataclasses.replace(job, status=common_pb2.JOB_STATUS_CANCELING)
        await tx.update_job(job)
        await tx.enqueue(
            RESTORE_CANCEL_REQUESTED,
            job.target_instance_id,
            events_pb2.RestoreCancelRequested(
                meta=new_meta(PRODUCER, clock.now()),
                account_id=job.account_id,
                restore_job_id=job.restore_job_id,
                target_instance_id=job.target_instance_id,
            ),
        )
    return job


def _apply(job: RestoreJob, event: events_pb2.RestoreUpdated) -> RestoreJob | None:
    """The job after the update, or None when the update is to be ignored."""
    occurred = from_timestamp(event.meta.occurred_at)
    if job.finished:
        return None  # a finished job is final
    if event.target_instance_id and event.target_instance_id != job.target_instance_id:
        log.warning(
            "restore-updated for job %s from instance %s, but its target is %s: ignored",
            job.restore_job_id,
            event.target_instance_id,
            job.target_instance_id,
        )
        return None
    if job.updated_at is not None and occurred < job.updated_at:
        return None  # stale: a later update was applied already
    status = event.status if rank(event.status) >= rank(job.status) else job.status
    return dataclasses.replace(
        job,
        status=status,
        error=event.error or job.error,
        stats=event.stats if event.HasField("stats") else job.stats,
        failed_files=tuple((f.path, f.reason) for f in event.failed_files) or job.failed_files,
        updated_at=occurred,
        finished_at=occurred if status in FINISHED else None,
    )


async def handle_restore_updated(event: events_pb2.RestoreUpdated, *, repo: RestoreStore) -> None:
    """Apply an agent's status report to its job, once per event id.

    Never moves a job backwards (a progress report cannot undo CANCELING or a
    finished status); updates older than the last applied one are ignored. A job
    that becomes FAILED raises a RESTORE_FAILED alert in the same transaction.
    """
    if not event.restore_job_id:
        raise PoisonRecord(f"restore-updated {event.meta.event_id} without restore_job_id")
    if not is_known_status(event.status):
        raise PoisonRecord(f"restore-updated {event.meta.event_id} with invalid status {event.status}")
    async with repo.transaction() as tx:
        if not await tx.claim_event(RESTORE_UPDATED_CONSUMER, event.meta.event_id):
            return
        job = await tx.get_job(event.restore_job_id)
        if job is None:
            log.warning("restore-updated for unknown restore job %s: ignored", event.restore_job_id)
            return
        updated = _apply(job, event)
        if updated is not None:
            await tx.update_job(updated)
            if updated.status == common_pb2.JOB_STATUS_FAILED and job.status != common_pb2.JOB_STATUS_FAILED:
                await tx.enqueue(ALERT_RAISED, updated.target_instance_id, _failed_alert(updated, event))
    if updated is not None and updated.finished_at is not None:
        duration = (updated.finished_at - updated.created_at).total_seconds()
        instruments().job_finished("restore", status_name(updated.status), duration)


def _failed_alert(job: RestoreJob, event: events_pb2.RestoreUpdated) -> events_pb2.AlertRaised:
    failed = f" ({job.stats.files_failed} file(s) not restored)" if job.stats.files_failed else ""
    return account_alert(
        events_pb2.ALERT_KIND_RESTORE_FAILED,
        producer=PRODUCER,
        now=from_timestamp(event.meta.occurred_at),
        account_id=job.account_id,
        instance_id=job.target_instance_id,
        job_id=job.restore_job_id,
        reason=f"restore of point {job.point_id} to {job.target_path or 'the original path'} failed{failed}: "
        f"{job.error or 'no error reported'}",
    )


def canceled_by_deactivation(job: RestoreJob, instance_id: str, at: dt.datetime) -> RestoreJob:
    """The job ended CANCELED by the cancel of ``instance_id``'s backup: finished now, so that a later
    report of the agent (even COMPLETE) is ignored and nothing half-written reads as restored."""
    role = "whose point it restores" if job.source_instance_id == instance_id else "it restores onto"
    return dataclasses.replace(
        job,
        status=common_pb2.JOB_STATUS_CANCELED,
        error=(
            f"stopped: backup of instance {instance_id} ({role}) was canceled; files written before the stop"
            f" may be incomplete under {job.target_path or 'the original paths'}"
        ),
        updated_at=at,
        finished_at=at,
    )


async def handle_instance_deactivated(event: events_pb2.InstanceDeactivated, *, repo: RestoreStore) -> None:
    """Backup of an instance was canceled (ADR 0040): its points are deleted, its agent uninstalled.

    In one transaction, once per event: the cancellation is recorded (new restores of the instance
    are refused), and every unfinished restore job from or onto the instance ends CANCELED at once,
    with ``restore-cancel-requested`` to its target's agent so that it stops writing (an agent that
    is offline or gone has nothing to stop; the job does not wait for it).
    """
    if not event.instance_id or not event.account_id:
        raise PoisonRecord(f"instance-deactivated {event.meta.event_id} without instance_id or account_id")
    at = from_timestamp(event.meta.occurred_at)
    stopped: list[str] = []
    async with repo.transaction() as tx:
        if not await tx.claim_event(DEACTIVATED_CONSUMER, event.meta.event_id):
            return
        await tx.record_cancellation(event.meta.event_id, event.account_id, event.instance_id, canceled=True, at=at)
        for job in await tx.unfinished_jobs_of(event.instance_id):
            if job.account_id != event.account_id:
                continue  # another account's instance of the same id cannot be; never touch it
            await tx.update_job(canceled_by_deactivation(job, event.instance_id, at))
            await tx.enqueue(
                RESTORE_CANCEL_REQUESTED,
                job.target_instance_id,
                events_pb2.RestoreCancelRequested(
                    meta=new_meta(PRODUCER, at),
                    account_id=job.account_id,
                    restore_job_id=job.restore_job_id,
                    target_instance_id=job.target_instance_id,
                ),
            )
            stopped.append(job.restore_job_id)
    if stopped:
        log.warning(
            "backup of instance %s canceled: %d restore job(s) stopped (%s)",
            event.instance_id,
            len(stopped),
            ", ".join(stopped),
        )


async def handle_instance_reinstated(event: events_pb2.InstanceReinstated, *, repo: RestoreStore) -> None:
    """A canceled instance's versions were reinstated (ADR 0040): its points may be restored again."""
    if not event.instance_id or not event.account_id:
        raise PoisonRecord(f"instance-reinstated {event.meta.event_id} without instance_id or account_id")
    async with repo.transaction() as tx:
        if await tx.claim_event(REINSTATED_CONSUMER, event.meta.event_id):
            await tx.record_cancellation(
                event.meta.event_id,
                event.account_id,
                event.instance_id,
                canceled=False,
                at=from_timestamp(event.meta.occurred_at),
            )
