"""What every scheduler handler shares: ``Deps``, the settings input, and loading the instance or
job a call may act on.

Contract: an instance or job of another account is refused exactly like an unknown id
(``authorized_instance``, ``authorized_job``); with an etag the locked row must be the one the
caller read (``Aborted`` otherwise). ``enqueue_settings`` publishes all of an instance's settings.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field

from strongroom.events.v1 import events_pb2
from strongroom_platform.auth import CallAuth, authorize
from strongroom_platform.clock import Clock
from strongroom_platform.events import INSTANCE_SETTINGS_CHANGED, new_meta
from strongroom_platform.telemetry import Metrics, instruments
from strongroom_platform.zones import DEFAULT_ZONE

from strongroom_scheduler import schedule
from strongroom_scheduler.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from strongroom_scheduler.inventory import DEFAULT_PREPARATION_TIMEOUT
from strongroom_scheduler.jobs import PRODUCER
from strongroom_scheduler.models import PRIORITIES, Instance, Job
from strongroom_scheduler.ports import SchedulerStore, SchedulerTx

CONSUMER = "scheduler"
AUDIT_CONSUMER = "scheduler.audit-recorded"


@dataclass
class Deps:
    """What the handlers need; ``rng`` picks default start times (seeded in tests)."""

    store: SchedulerStore
    clock: Clock
    rng: random.Random = field(default_factory=random.Random)
    # The zone whose midnights daily start minutes count from (STRONGROOM_ZONE, default UTC+8).
    zone: dt.tzinfo = DEFAULT_ZONE
    # How long an activated instance's agent has to enroll before PREPARATION_FAILED (ADR 0040).
    preparation_timeout: dt.timedelta = DEFAULT_PREPARATION_TIMEOUT
    # The fleet's cap on concurrent backups and the admission window (ADR 0053); the overview shows them.
    admission: schedule.Admission = field(default_factory=schedule.Admission)
    # Jobs, bytes and last successes (ADR 0039); the process's meter provider unless a test gives one.
    metrics: Metrics = field(default_factory=instruments)


@dataclass(frozen=True, slots=True)
class SettingsInput:
    """Backup settings to apply; ``None`` = keep the current value (or take the default)."""

    priority: int | None = None
    daily_start_minute: int | None = None
    keep_latest_version: bool | None = None
    roots: list[str] | None = None


def validate_settings(settings: SettingsInput) -> None:
    if settings.priority is not None and settings.priority not in PRIORITIES:
        raise InvalidArgument(f"priority must be BACKUP_PRIORITY_LOW or BACKUP_PRIORITY_HIGH, got {settings.priority}")
    if settings.daily_start_minute is not None:
        try:
            schedule.validate_minute(settings.daily_start_minute)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
    for root in settings.roots or []:
        if not root or root != root.strip():
            raise InvalidArgument(f"backup roots must be non-empty paths without surrounding spaces, got {root!r}")
    if settings.roots is not None and len(set(settings.roots)) != len(settings.roots):
        raise InvalidArgument("backup roots must not repeat")


def require_id(value: str, what: str) -> str:
    if not value.strip():
        raise InvalidArgument(f"{what} is required")
    return value.strip()


async def authorized_instance(
    tx: SchedulerTx,
    instance_id: str,
    *,
    call: CallAuth,
    for_update: bool = False,
    etag: str = "",
    now: dt.datetime | None = None,
) -> Instance:
    """The instance, if the caller may perform ``call`` on it; an instance of another account is
    refused exactly like an unknown id. With ``etag`` (read locked, ``for_update``) it must still be
    the instance the caller read at ``now`` (``Aborted`` otherwise): the check and the write that
    follows are one transaction, so no other change slips in between."""

    def not_found() -> NotFound:
        return NotFound(f"instance {instance_id} not found")

    instance = await tx.get_instance(require_id(instance_id, "instance_id"), for_update=for_update)
    if instance is None:
        raise not_found()
    authorize(instance.account_id, not_found, call=call)
    if etag:
        assert for_update and now is not None, "an etag is checked on the locked row, at the handler's now"
        current = instance.etag(now)
        if etag != current:
            raise Aborted(
                f"instance {instance_id} changed since etag {etag} was read (now {current}); nothing was changed: "
                "read it again and retry"
            )
    return instance


async def active_instance(
    tx: SchedulerTx, instance_id: str, *, call: CallAuth, etag: str = "", now: dt.datetime | None = None
) -> Instance:
    instance = await authorized_instance(tx, instance_id, call=call, for_update=True, etag=etag, now=now)
    if instance.canceled:
        raise FailedPrecondition(f"backup of instance {instance_id} was canceled; activate it again to back it up")
    return instance


def require_activated(instance: Instance) -> None:
    if not instance.activated:
        raise FailedPrecondition(f"backup of instance {instance.instance_id} is not activated; activate it first")
    if instance.released:
        raise FailedPrecondition(f"the inventory says instance {instance.instance_id} is gone; its backups stopped")


async def enqueue_settings(tx: SchedulerTx, instance: Instance, now: dt.datetime) -> None:
    """Publish the instance's settings as they are now (the catalog's retention reads
    ``keep_latest_version``); every change sends all of them, so the newest event is the truth."""
    event = events_pb2.InstanceSettingsChanged(
        meta=new_meta(PRODUCER, now),
        account_id=instance.account_id,
        instance_id=instance.instance_id,
        keep_latest_version=instance.keep_latest_version,
        priority=instance.priority,  # type: ignore[arg-type]  # a BackupPriority value
        daily_start_minute=instance.daily_start_minute,
    )
    await tx.enqueue(INSTANCE_SETTINGS_CHANGED, instance.instance_id, event)


async def authorized_job(tx: SchedulerTx, job_id: str, *, call: CallAuth, for_update: bool = False) -> Job:
    """The job, if the caller may perform ``call`` on it; a job of another account is refused
    exactly like an unknown id."""

    def not_found() -> NotFound:
        return NotFound(f"backup job {job_id} not found")

    job = await tx.get_job(require_id(job_id, "job_id"), for_update=for_update)
    if job is None:
        raise not_found()
    authorize(job.account_id, not_found, call=call)
    return job
