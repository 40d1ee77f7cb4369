from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from scheduler_helpers import activate, active_instance, call, enroll, update_job
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import utc
from strongroom_platform.events import ALERT_RAISED, JOB_REQUESTED
from strongroom_platform.testing import FakeClock
from strongroom_platform.zones import parse_zone
from strongroom_scheduler import handlers
from strongroom_scheduler.handlers import Deps, SettingsInput
from strongroom_scheduler.schedule import (
    local_date,
    next_daily_run,
    next_run,
    run_schedule_loop,
    schedule_due,
    slot_on,
    validate_minute,
)
from strongroom_scheduler.testing import InMemorySchedulerStore


def test_slot_is_minute_of_day_in_utc_plus_8() -> None:
    # 02:00 UTC+8 on Jan 2 is 18:00 UTC on Jan 1
    assert slot_on(dt.date(2026, 1, 2), 120) == utc(2026, 1, 1, 18, 0)
    assert slot_on(dt.date(2026, 1, 2), 23 * 60 + 59) == utc(2026, 1, 2, 15, 59)


def test_local_date_crosses_midnight_at_16_utc() -> None:
    assert local_date(utc(2026, 1, 1, 15, 59)) == dt.date(2026, 1, 1)
    assert local_date(utc(2026, 1, 1, 16, 0)) == dt.date(2026, 1, 2)


def test_next_daily_run_is_strictly_after() -> None:
    now = utc(2026, 1, 1, 18, 0)  # exactly 02:00 UTC+8 on Jan 2
    assert next_daily_run(120, now) == utc(2026, 1, 2, 18, 0)
    assert next_daily_run(121, now) == utc(2026, 1, 1, 18, 1)


@pytest.mark.parametrize("minute", [-1, 1440, 5000])
def test_minute_out_of_range_is_rejected(minute: int) -> None:
    with pytest.raises(ValueError, match="daily_start_minute"):
        validate_minute(minute)


def at_local(day: int, hour: int, minute: int = 0) -> dt.datetime:
    """Jan ``day`` 2026 at hour:minute UTC+8, as UTC."""
    return slot_on(dt.date(2026, 1, day), hour * 60 + minute)


def test_seed_example_earlier_time_skips_today() -> None:
    # Scheduled 05:00; at 04:30 the time is changed to 04:00: today's backup is skipped.
    now = at_local(5, 4, 30)
    assert next_run(4 * 60, now, last_scheduled_on=dt.date(2026, 1, 4)) == at_local(6, 4, 0)


def test_later_time_runs_today_when_today_has_not_run() -> None:
    now = at_local(5, 4, 30)
    assert next_run(5 * 60 + 30, now, last_scheduled_on=dt.date(2026, 1, 4)) == at_local(5, 5, 30)


def test_after_todays_backup_ran_next_is_tomorrow_whatever_the_time() -> None:
    now = at_local(5, 4, 30)
    today = dt.date(2026, 1, 5)
    assert next_run(23 * 60, now, last_scheduled_on=today) == at_local(6, 23, 0)
    assert next_run(60, now, last_scheduled_on=today) == at_local(6, 1, 0)


async def test_activation_schedules_default_time_in_first_six_hours(deps: Deps, clock: FakeClock) -> None:
    minutes = set()
    for _ in range(30):
        instance = await activate(deps)
        assert 0 <= instance.daily_start_minute < 360
        assert instance.next_backup_at > clock.now()
        assert instance.next_backup_at == next_daily_run(instance.daily_start_minute, clock.now())
        minutes.add(instance.daily_start_minute)
    assert len(minutes) > 1  # random, not a constant


async def test_due_instance_gets_a_scheduled_job_once(
    deps: Deps, store: InMemorySchedulerStore, clock: FakeClock
) -> None:
    instance = await active_instance(deps, minute=2 * 60)  # 02:00 UTC+8 = 18:00 UTC
    assert instance.next_backup_at == utc(2026, 1, 1, 18, 0)
    clock.set(utc(2026, 1, 1, 17, 59))
    assert (await schedule_due(store, clock)).created == []
    clock.set(utc(2026, 1, 1, 18, 0, 10))
    first = await schedule_due(store, clock)
    assert len(first.created) == 1
    assert (await schedule_due(store, clock)).created == []
    requested = store.events(JOB_REQUESTED)
    assert len(requested) == 1
    assert requested[0].trigger == requested[0].TRIGGER_SCHEDULE  # type: ignore[attr-defined]
    after = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert after.next_backup_at == utc(2026, 1, 2, 18, 0)
    assert after.last_scheduled_on == dt.date(2026, 1, 2)


async def test_still_running_backup_skips_the_day(deps: Deps, store: InMemorySchedulerStore, clock: FakeClock) -> None:
    instance = await active_instance(deps, minute=2 * 60)
    clock.set(utc(2026, 1, 1, 18, 0))
    [job_id] = (await schedule_due(store, clock)).created
    await update_job(deps, job_id, instance.instance_id, common_pb2.JOB_STATUS_RUNNING)
    clock.set(utc(2026, 1, 2, 18, 0))
    result = await schedule_due(store, clock)
    assert result.created == []
    assert result.skipped == [instance.instance_id]
    [alert] = store.events(ALERT_RAISED)
    assert isinstance(alert, events_pb2.AlertRaised)
    assert (alert.kind, alert.instance_id, alert.job_id) == (
        events_pb2.ALERT_KIND_BACKUP_SKIPPED,
        instance.instance_id,
        job_id,
    )
    assert alert.reason.startswith(f"the 2026-01-03 backup was skipped: backup job {job_id} is still running")
    assert (await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))).next_backup_at == utc(
        2026, 1, 3, 18, 0
    )
    await update_job(deps, job_id, instance.instance_id, common_pb2.JOB_STATUS_COMPLETE)
    clock.set(utc(2026, 1, 3, 18, 0))
    assert len((await schedule_due(store, clock)).created) == 1


async def test_not_enrolled_and_paused_instances_get_no_jobs(
    deps: Deps, store: InMemorySchedulerStore, clock: FakeClock
) -> None:
    waiting = await activate(deps, minute=120)
    paused = await active_instance(deps, minute=120)
    await handlers.pause_backup(deps, paused.instance_id, call=call("PauseBackup"))
    clock.set(utc(2026, 1, 1, 18, 0))
    result = await schedule_due(store, clock)
    assert result.created == []
    assert result.skipped == [waiting.instance_id]
    assert store.events(ALERT_RAISED) == []  # not enrolled yet: Preparing, not a skipped backup
    # the agent enrolls later: the next day's slot runs, not a backlog
    await enroll(deps, waiting.instance_id)
    assert (await schedule_due(store, clock)).created == []
    clock.set(utc(2026, 1, 2, 18, 0))
    assert len((await schedule_due(store, clock)).created) == 1


async def test_missed_days_collapse_into_one_job(deps: Deps, store: InMemorySchedulerStore, clock: FakeClock) -> None:
    instance = await active_instance(deps, minute=120)
    clock.set(utc(2026, 1, 5, 12, 0))  # four slots missed while the scheduler was down
    assert len((await schedule_due(store, clock)).created) == 1
    assert (await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))).next_backup_at == utc(
        2026, 1, 5, 18, 0
    )


async def test_batches_cover_every_due_instance(deps: Deps, store: InMemorySchedulerStore, clock: FakeClock) -> None:
    for _ in range(5):
        await active_instance(deps, minute=120)
    clock.set(utc(2026, 1, 1, 18, 0))
    assert len((await schedule_due(store, clock, batch_size=2)).created) == 5


async def test_time_change_through_settings_follows_seed_rules(
    deps: Deps, store: InMemorySchedulerStore, clock: FakeClock
) -> None:
    instance = await active_instance(deps, minute=5 * 60)  # 05:00 UTC+8
    clock.set(at_local(2, 4, 30))
    changed = await handlers.update_settings(
        deps,
        instance.instance_id,
        SettingsInput(daily_start_minute=4 * 60),
        ["daily_start_minute"],
        call=call("UpdateSettings"),
    )
    assert changed.next_backup_at == at_local(3, 4, 0)  # today's skipped
    changed = await handlers.update_settings(
        deps,
        instance.instance_id,
        SettingsInput(daily_start_minute=6 * 60),
        ["daily_start_minute"],
        call=call("UpdateSettings"),
    )
    assert changed.next_backup_at == at_local(2, 6, 0)  # later than now: today
    clock.set(at_local(2, 6, 0))
    assert len((await schedule_due(store, clock)).created) == 1
    changed = await handlers.update_settings(
        deps,
        instance.instance_id,
        SettingsInput(daily_start_minute=22 * 60),
        ["daily_start_minute"],
        call=call("UpdateSettings"),
    )
    assert changed.next_backup_at == at_local(3, 22, 0)  # today's already ran: from tomorrow


async def test_resume_schedules_from_the_next_slot(deps: Deps, store: InMemorySchedulerStore, clock: FakeClock) -> None:
    instance = await active_instance(deps, minute=120)
    await handlers.pause_backup(deps, instance.instance_id, call=call("PauseBackup"))
    clock.set(utc(2026, 1, 4, 12, 0))
    assert (await schedule_due(store, clock)).created == []
    resumed = await handlers.resume_backup(deps, instance.instance_id, call=call("ResumeBackup"))
    assert resumed.next_backup_at == utc(2026, 1, 4, 18, 0)
    assert (await schedule_due(store, clock)).created == []


async def test_loop_runs_periodically_on_the_injected_clock(
    deps: Deps, store: InMemorySchedulerStore, clock: FakeClock
) -> None:
    instance = await active_instance(deps, minute=120)
    clock.set(utc(2026, 1, 1, 17, 59, 50))

    async def tick() -> None:
        await schedule_due(store, clock)

    loop = asyncio.create_task(run_schedule_loop(tick, clock, interval=30))
    try:
        await asyncio.sleep(0.01)
        assert store.events(JOB_REQUESTED) == []
        clock.advance(30)
        for _ in range(100):
            await asyncio.sleep(0.001)
            if store.events(JOB_REQUESTED):
                break
        [event] = store.events(JOB_REQUESTED)
        assert event.instance_id == instance.instance_id  # type: ignore[attr-defined]
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


async def test_loop_survives_a_failing_pass(clock: FakeClock) -> None:
    calls = 0

    async def tick() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database down")

    loop = asyncio.create_task(run_schedule_loop(tick, clock, interval=30))
    try:
        await asyncio.sleep(0.01)
        clock.advance(30)
        for _ in range(100):
            await asyncio.sleep(0.001)
            if calls >= 2:
                break
        assert calls == 2
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


def test_the_schedule_zone_is_a_setting_not_a_constant() -> None:
    berlin = parse_zone("Europe/Berlin")
    # 02:00 in Berlin on Jan 2 (UTC+1) and on Jul 2 (UTC+2, summer time)
    assert slot_on(dt.date(2026, 1, 2), 120, berlin) == utc(2026, 1, 2, 1, 0)
    assert slot_on(dt.date(2026, 7, 2), 120, berlin) == utc(2026, 7, 2, 0, 0)
    assert local_date(utc(2026, 1, 1, 23, 30), berlin) == dt.date(2026, 1, 2)
    # the seed's rule holds in any zone: an earlier time than now skips today
    now = slot_on(dt.date(2026, 1, 5), 4 * 60 + 30, dt.UTC)
    assert next_run(4 * 60, now, dt.date(2026, 1, 4), dt.UTC) == utc(2026, 1, 6, 4, 0)


def test_a_day_with_a_daylight_saving_gap_still_has_one_slot() -> None:
    berlin = parse_zone("Europe/Berlin")
    # 2026-03-29: clocks go from 02:00 to 03:00 in Berlin; a 02:30 slot still falls on that day, once
    slot = next_daily_run(150, utc(2026, 3, 28, 23, 0), berlin)
    assert local_date(slot, berlin) == dt.date(2026, 3, 29)
    assert next_daily_run(150, slot, berlin) > slot


async def test_activation_in_another_zone_schedules_by_its_midnight(deps: Deps, clock: FakeClock) -> None:
    clock.set(utc(2026, 1, 1, 12, 0))
    deps.zone = dt.UTC
    instance = await active_instance(deps, minute=60)
    assert instance.next_backup_at == utc(2026, 1, 2, 1, 0)  # 01:00 UTC, not 01:00 UTC+8
