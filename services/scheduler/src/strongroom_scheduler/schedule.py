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
from strongroom_scheduler.models import TRIGGER_SCHEDULE, Instance
from strongroom_scheduler.ports import SchedulerStore, SchedulerTx

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


@dataclass(frozen=True, slots=True)
class Admission:
    """How many backups the fleet runs at once (ADR 0053).

    ``max_concurrent``: unfinished backup jobs of every account together (0: no cap). A due slot that
    finds them all taken waits, oldest slot first, and starts when one frees; one still waiting
    ``window`` after its slot time is skipped and reported. "Back up now" is not held back, but its
    job counts against the cap.
    """

    max_concurrent: int = 0
    window: dt.timedelta = dt.timedelta(minutes=DEFAULT_WINDOW_MINUTES)


@dataclass
class SchedulePass:
    """What one pass over the due instances did."""

    created: list[str] = field(default_factory=list)  # job ids
    skipped: list[str] = field(default_factory=list)  # instance ids whose slot was skipped
    waiting: list[str] = field(default_factory=list)  # instance ids whose slot waits for a free backup slot
    waiting_total: int = 0  # slots of the whole fleet still due when the pass ended (0 without a cap)


async def schedule_due(
    store: SchedulerStore,
    clock: Clock,
    *,
    batch_size: int = 100,
    zone: dt.tzinfo = DEFAULT_ZONE,
    admission: Admission = Admission(),
) -> SchedulePass:
    """Process every slot that is due: start a job, skip the slot, or leave it waiting for a free
    backup slot (``admission``); a started or skipped slot advances ``next_backup_at``.

    A slot is skipped when the agent has not enrolled yet, or when the
    instance's previous backup is still running (the seed: "subsequent backups
    are skipped to prioritize the completion of the ongoing backup job"), or when it waited for a
    free backup slot longer than the admission window; the latter two raise a BACKUP_SKIPPED alert.
    Slots missed while the scheduler was down collapse into one job.
    Each batch is one transaction whose rows are locked with SKIP LOCKED, so
    several scheduler replicas can run this concurrently; with a cap, admission itself is
    serialized across replicas (an advisory lock), so the cap holds exactly.
    """
    result = SchedulePass()
    capped = admission.max_concurrent > 0
    while True:
        now = clock.now()
        async with store.transaction() as tx:
            free = 0
            if capped:
                await tx.lock_admission()
                free = admission.max_concurrent - await tx.count_unfinished_jobs()
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
                    reason = (
                        f"the {slot_day} backup was skipped: backup job {unfinished[0].job_id} is still "
                        "running, and an ongoing backup is completed first"
                    )
                    await _alert_skipped(tx, instance, now, reason, job_id=unfinished[0].job_id)
                elif capped and free <= 0:
                    if now < instance.next_backup_at + admission.window:
                        result.waiting.append(instance.instance_id)
                        continue  # the slot stays due: it starts when a backup slot frees
                    log.warning(
                        "instance %s: no free backup slot within %s; skipping the %s backup",
                        instance.instance_id,
                        admission.window,
                        slot_day,
                    )
                    result.skipped.append(instance.instance_id)
                    reason = (
                        f"the {slot_day} backup was skipped: the fleet's {admission.max_concurrent} concurrent "
                        f"backups stayed busy for {_hours(admission.window)} after its start time; raise "
                        "STRONGROOM_MAX_CONCURRENT_BACKUPS or spread the instances' backup times"
                    )
                    await _alert_skipped(tx, instance, now, reason)
                else:
                    window_closes = instance.next_backup_at + admission.window
                    job = await start_job(tx, instance, TRIGGER_SCHEDULE, now, start_before=window_closes)
                    log.info("instance %s: started scheduled backup job %s", instance.instance_id, job.job_id)
                    result.created.append(job.job_id)
                    free -= 1
                instance.last_scheduled_on = max(slot_day, instance.last_scheduled_on or slot_day)
                instance.next_backup_at = next_run(instance.daily_start_minute, now, instance.last_scheduled_on, zone)
                await tx.update_instance(instance)
            if capped:
                result.waiting_total = await tx.count_due(now)
        # a full fleet leaves the rest of the due slots waiting for the next pass (oldest first)
        if len(due) < batch_size or (capped and free <= 0):
            return result


async def _alert_skipped(
    tx: SchedulerTx, instance: Instance, now: dt.datetime, reason: str, *, job_id: str = ""
) -> None:
    alert = account_alert(
        events_pb2.ALERT_KIND_BACKUP_SKIPPED,
        producer=PRODUCER,
        now=now,
        account_id=instance.account_id,
        instance_id=instance.instance_id,
        instance_name=instance.name,
        job_id=job_id,
        reason=reason,
    )
    await tx.enqueue(ALERT_RAISED, instance.instance_id, alert)


def _hours(window: dt.timedelta) -> str:
    hours = window.total_seconds() / 3600
    return f"{hours:g} h"


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
