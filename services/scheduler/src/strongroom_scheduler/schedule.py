"""The daily schedule: pure functions over minute-of-day in the schedule zone, plus the loop that starts due jobs.

Every instance has one daily slot, ``daily_start_minute`` minutes after
midnight in the deployment's schedule zone (``STRONGROOM_ZONE``, default UTC+8,
the seed's). ``next_backup_at`` is the UTC instant of the next slot to process;
``last_scheduled_on`` is the zone's date of the last slot that was processed (a job was created or the slot was
skipped). One rule, :func:`next_run`, serves activation, resume, advancing
after a slot, and the seed's "modify next backup time" rules.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from strongroom.events.v1 import events_pb2
from strongroom_platform.alerts import account_alert
from strongroom_platform.clock import Clock
from strongroom_platform.events import ALERT_RAISED
from strongroom_platform.zones import DEFAULT_ZONE

from strongroom_scheduler.jobs import PRODUCER, start_job
from strongroom_scheduler.models import TRIGGER_SCHEDULE
from strongroom_scheduler.ports import SchedulerStore

log = logging.getLogger(__name__)

MINUTES_PER_DAY = 24 * 60
DEFAULT_WINDOW_MINUTES = 6 * 60  # the default start time is random in 00:00-06:00 of the zone


def validate_minute(minute: int) -> None:
    """Raise ValueError unless ``minute`` is a minute of the day (0 <= minute < 1440)."""
    if not 0 <= minute < MINUTES_PER_DAY:
        raise ValueError(f"daily_start_minute must be in [0, {MINUTES_PER_DAY}) (00:00-23:59), got {minute}")


def local_date(when: dt.datetime, zone: dt.tzinfo = DEFAULT_ZONE) -> dt.date:
    """The calendar date of an aware instant in ``zone``."""
    return when.astimezone(zone).date()


def slot_on(day: dt.date, minute: int, zone: dt.tzinfo = DEFAULT_ZONE) -> dt.datetime:
    """The UTC instant of ``minute`` on the date ``day`` of ``zone``.

    In a zone with daylight saving, a minute the clocks skip resolves to the instant after the gap
    and a repeated one to its first occurrence (``fold=0``), so every day has exactly one slot.
    """
    validate_minute(minute)
    local = dt.datetime.combine(day, dt.time(minute // 60, minute % 60), tzinfo=zone)
    return local.astimezone(dt.UTC)


def next_daily_run(minute: int, after: dt.datetime, zone: dt.tzinfo = DEFAULT_ZONE) -> dt.datetime:
    """The first daily slot at ``minute`` (of ``zone``) strictly later than ``after``, in UTC."""
    candidate = slot_on(local_date(after, zone), minute, zone)
    if candidate <= after:
        candidate = slot_on(local_date(after, zone) + dt.timedelta(days=1), minute, zone)
    return candidate


def next_run(
    minute: int, now: dt.datetime, last_scheduled_on: dt.date | None, zone: dt.tzinfo = DEFAULT_ZONE
) -> dt.datetime:
    """The next slot to process: the first one after ``now`` whose day has not been processed yet.

    This is the seed's "modify next backup time" rule: if today's backup has
    not run and the new time is later than now, it runs today at the new time;
    if the new time is earlier than now, today's backup is skipped; if today's
    backup already ran, the next one is tomorrow whatever the new time is.
    """
    candidate = next_daily_run(minute, now, zone)
    while last_scheduled_on is not None and local_date(candidate, zone) <= last_scheduled_on:
        candidate = slot_on(local_date(candidate, zone) + dt.timedelta(days=1), minute, zone)
    return candidate


def format_minute(minute: int) -> str:
    """``HH:MM`` of a minute of the day."""
    return f"{minute // 60:02d}:{minute % 60:02d}"


@dataclass
class SchedulePass:
    """What one pass over the due instances did."""

    created: list[str] = field(default_factory=list)  # job ids
    skipped: list[str] = field(default_factory=list)  # instance ids whose slot was skipped


async def schedule_due(
    store: SchedulerStore, clock: Clock, *, batch_size: int = 100, zone: dt.tzinfo = DEFAULT_ZONE
) -> SchedulePass:
    """Process every slot that is due: start a job, or skip the slot, then advance ``next_backup_at``.

    A slot is skipped when the agent has not enrolled yet, or when the
    instance's previous backup is still running (the seed: "subsequent backups
    are skipped to prioritize the completion of the ongoing backup job"); the
    latter raises a BACKUP_SKIPPED alert.
    Slots missed while the scheduler was down collapse into one job.
    Each batch is one transaction whose rows are locked with SKIP LOCKED, so
    several scheduler replicas can run this concurrently.
    """
    result = SchedulePass()
    while True:
        now = clock.now()
        async with store.transaction() as tx:
            due = await tx.due_instances(now, batch_size)
            for instance in due:
                slot_day = local_date(instance.next_backup_at, zone)
                unfinished = await tx.unfinished_jobs(instance.instance_id)
                if not instance.enrolled:
                    log.info(
                        "instance %s: agent not enrolled yet; skipping the %s backup", instance.instance_id, slot_day
                    )
                    result.skipped.append(instance.instance_id)
                elif unfinished:
                    log.warning(
                        "instance %s: backup job %s is still running; skipping the %s backup",
                        instance.instance_id,
                        unfinished[0].job_id,
                        slot_day,
                    )
                    result.skipped.append(instance.instance_id)
                    alert = account_alert(
                        events_pb2.ALERT_KIND_BACKUP_SKIPPED,
                        producer=PRODUCER,
                        now=now,
                        account_id=instance.account_id,
                        instance_id=instance.instance_id,
                        instance_name=instance.name,
                        job_id=unfinished[0].job_id,
                        reason=f"the {slot_day} backup was skipped: backup job {unfinished[0].job_id} is still "
                        "running, and an ongoing backup is completed first",
                    )
                    await tx.enqueue(ALERT_RAISED, instance.instance_id, alert)
                else:
                    job = await start_job(tx, instance, TRIGGER_SCHEDULE, now)
                    log.info("instance %s: started scheduled backup job %s", instance.instance_id, job.job_id)
                    result.created.append(job.job_id)
                instance.last_scheduled_on = max(slot_day, instance.last_scheduled_on or slot_day)
                instance.next_backup_at = next_run(instance.daily_start_minute, now, instance.last_scheduled_on, zone)
                await tx.update_instance(instance)
        if len(due) < batch_size:
            return result


async def run_schedule_loop(tick: Callable[[], Awaitable[object]], clock: Clock, *, interval: float = 30.0) -> None:
    """Call ``tick()`` every ``interval`` seconds of ``clock`` until cancelled; failures are logged and retried."""
    while True:
        try:
            await tick()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("schedule pass failed; retrying in %.0fs", interval)
        await clock.sleep(interval)
