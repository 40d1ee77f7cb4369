"""The restore service's logic: creating, reading and cancelling jobs, and applying agent updates.

Plain functions over the ports, unit-tested with the in-memory fakes.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.restore.v1 import restore_pb2
from strongroom_platform.clock import Clock
from strongroom_platform.eventbus import PoisonRecord
from strongroom_platform.events import RESTORE_CANCEL_REQUESTED, RESTORE_REQUESTED, from_timestamp, new_meta

from strongroom_restore import paths
from strongroom_restore.errors import FailedPrecondition, InvalidArgument, NotFound
from strongroom_restore.model import FINISHED, RestoreJob, is_known_status, rank, status_name
from strongroom_restore.ports import CatalogClient, RestoreStore

log = logging.getLogger(__name__)

PRODUCER = "restore"
RESTORE_UPDATED_CONSUMER = "restore.restore-updated"
LIST_LIMIT = 500
_POLICIES = {gateway_pb2.CONFLICT_POLICY_SKIP, gateway_pb2.CONFLICT_POLICY_OVERWRITE}


def _new_id() -> str:
    return str(uuid.uuid4())


async def create_restore_job(
    request: restore_pb2.CreateRestoreJobRequest,
    *,
    repo: RestoreStore,
    catalog: CatalogClient,
    clock: Clock,
    new_id: Callable[[], str] = _new_id,
) -> RestoreJob:
    """Validate the request, check the point with the catalog, store the job and request the restore.

    The job is stored QUEUED and ``restore-requested`` (keyed by the target
    instance) is enqueued in the same transaction. The target defaults to the
    point's own instance, the conflict policy to SKIP.

    Not checked yet (no feed of instance state in this service): that the
    target is not Stopped and is in the point's region and account.
    """
    if not request.point_id:
        raise InvalidArgument("point_id is required")
    include = tuple(paths.relative_path(p, "include_paths") for p in request.include_paths)
    exclude = tuple(paths.relative_path(p, "exclude_paths") for p in request.exclude_paths)
    target_path = paths.target_path(request.target_path)
    policy = int(request.conflict_policy) or gateway_pb2.CONFLICT_POLICY_SKIP
    if policy not in _POLICIES:
        raise InvalidArgument(f"conflict_policy {policy} is not SKIP or OVERWRITE")

    point = await catalog.get_point(request.point_id)
    if point is None:
        raise NotFound(f"backup point {request.point_id!r} not found (unknown or expired)")
    target = request.target_instance_id or point.instance_id
    job = RestoreJob(
        restore_job_id=new_id(),
        account_id=point.account_id,
        point_id=point.point_id,
        source_instance_id=point.instance_id,
        target_instance_id=target,
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
    async with repo.transaction() as tx:
        await tx.insert_job(job)
        await tx.enqueue(RESTORE_REQUESTED, job.target_instance_id, event)
    log.info("restore job %s: point %s -> instance %s", job.restore_job_id, job.point_id, target)
    return job


async def get_restore_job(repo: RestoreStore, restore_job_id: str) -> RestoreJob:
    if not restore_job_id:
        raise InvalidArgument("restore_job_id is required")
    job = await repo.get_job(restore_job_id)
    if job is None:
        raise NotFound(f"restore job {restore_job_id!r} not found")
    return job


async def list_restore_jobs(repo: RestoreStore, instance_id: str) -> list[RestoreJob]:
    """Jobs restoring to or from the instance, newest first (the latest ``LIST_LIMIT``)."""
    if not instance_id:
        raise InvalidArgument("instance_id is required")
    return await repo.list_jobs(instance_id, limit=LIST_LIMIT)


async def cancel_restore_job(repo: RestoreStore, restore_job_id: str, *, clock: Clock) -> RestoreJob:
    """Ask the agent to stop the job: status CANCELING and ``restore-cancel-requested``.

    Cancelling a job that is already CANCELING changes nothing; a finished job
    cannot be cancelled (FailedPrecondition).
    """
    if not restore_job_id:
        raise InvalidArgument("restore_job_id is required")
    async with repo.transaction() as tx:
        job = await tx.get_job(restore_job_id)
        if job is None:
            raise NotFound(f"restore job {restore_job_id!r} not found")
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
        updated_at=occurred,
        finished_at=occurred if status in FINISHED else None,
    )


async def handle_restore_updated(event: events_pb2.RestoreUpdated, *, repo: RestoreStore) -> None:
    """Apply an agent's status report to its job, once per event id.

    Never moves a job backwards (a progress report cannot undo CANCELING or a
    finished status); updates older than the last applied one are ignored.
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
