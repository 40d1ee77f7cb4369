"""Starting a backup job: shared by the daily schedule and "back up now"."""

from __future__ import annotations

import datetime as dt
import uuid

from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform.events import JOB_REQUESTED, new_meta, to_timestamp

from strongroom_scheduler.models import Instance, Job, Trigger
from strongroom_scheduler.ports import SchedulerTx

PRODUCER = "scheduler"


async def start_job(
    tx: SchedulerTx, instance: Instance, trigger: Trigger, now: dt.datetime, *, start_before: dt.datetime | None = None
) -> Job:
    """Create a QUEUED job with the instance's current priority and roots, and request it from the agent.

    ``start_before`` (a scheduled job: its slot time + the admission window) travels in the request:
    a gateway replica that holds the job for a free backup slot until then skips it (ADR 0053).

    The caller holds the instance row lock and has checked that no other job
    is unfinished (a unique index enforces it as well).
    """
    job = Job(
        job_id=str(uuid.uuid4()),
        instance_id=instance.instance_id,
        account_id=instance.account_id,
        status=common_pb2.JOB_STATUS_QUEUED,
        trigger=trigger,
        priority=instance.priority,
        roots=list(instance.roots),
        created_at=now,
    )
    await tx.insert_job(job)
    event = events_pb2.JobRequested(
        meta=new_meta(PRODUCER, now),
        account_id=instance.account_id,
        instance_id=instance.instance_id,
        job_id=job.job_id,
        priority=instance.priority,  # type: ignore[arg-type]
        trigger=trigger,  # type: ignore[arg-type]
        roots=job.roots,
    )
    if start_before is not None:
        event.start_before.CopyFrom(to_timestamp(start_before))
    await tx.enqueue(JOB_REQUESTED, instance.instance_id, event)
    return job
