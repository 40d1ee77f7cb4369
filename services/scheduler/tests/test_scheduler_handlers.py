from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from etag_check import check_a_stale_etag_changes_nothing
from scheduler_helpers import (
    activate,
    active_instance,
    call,
    enroll,
    every_job_page,
    finished_jobs,
    job_update,
    meta,
    update_job,
)
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_platform.events import (
    ALERT_RAISED,
    INSTANCE_ACTIVATED,
    INSTANCE_DEACTIVATED,
    INSTANCE_SETTINGS_CHANGED,
    JOB_CANCEL_REQUESTED,
    JOB_REQUESTED,
    from_timestamp,
)
from strongroom_platform.testing import FakeClock
from strongroom_scheduler import handlers
from strongroom_scheduler.errors import FailedPrecondition, InvalidArgument, NotFound
from strongroom_scheduler.handlers import Deps, SettingsInput
from strongroom_scheduler.testing import InMemorySchedulerStore

S = scheduler_pb2


async def test_activation_defaults_token_and_event(deps: Deps, store: InMemorySchedulerStore, clock: FakeClock) -> None:
    instance, token = await handlers.activate_backup(
        deps, account_id="acme", name="web-1", region="cn-hangzhou", settings=None, call=call("ActivateBackup")
    )
    assert instance.status(clock.now()) == S.RUNNING_STATUS_PREPARING
    assert instance.priority == common_pb2.BACKUP_PRIORITY_LOW
    assert instance.keep_latest_version is True
    assert 0 <= instance.daily_start_minute < 360
    assert len(token) >= 32
    assert instance.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    [event] = store.events(INSTANCE_ACTIVATED)
    assert isinstance(event, events_pb2.InstanceActivated)
    assert event.instance_id == instance.instance_id
    assert event.region == "cn-hangzhou"
    assert event.enrollment_token_sha256 == instance.token_sha256
    assert token not in str(event)
    assert from_timestamp(event.token_expires_at) == clock.now() + dt.timedelta(hours=24)


async def test_activation_with_settings_in_the_credentials_only_account(deps: Deps) -> None:
    settings = SettingsInput(
        priority=common_pb2.BACKUP_PRIORITY_HIGH, daily_start_minute=0, keep_latest_version=False, roots=["/data"]
    )
    instance, _ = await handlers.activate_backup(
        deps, account_id="", name="db", region="local", settings=settings, call=call("ActivateBackup")
    )
    assert instance.account_id == "acme"
    assert (instance.priority, instance.daily_start_minute, instance.keep_latest_version, instance.roots) == (
        common_pb2.BACKUP_PRIORITY_HIGH,
        0,
        False,
        ["/data"],
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": " "}, "name is required"),
        ({"region": ""}, "region is required"),
        ({"settings": SettingsInput(daily_start_minute=1440)}, "daily_start_minute"),
        ({"settings": SettingsInput(priority=7)}, "priority must be"),
        ({"settings": SettingsInput(roots=["/a", "/a"])}, "must not repeat"),
        ({"settings": SettingsInput(roots=[""])}, "non-empty"),
    ],
)
async def test_activation_rejects_bad_input(deps: Deps, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"account_id": "acme", "name": "web", "region": "r", "settings": None, **kwargs}
    with pytest.raises(InvalidArgument, match=message):
        await handlers.activate_backup(deps, **args, call=call("ActivateBackup"))  # type: ignore[arg-type]


async def test_preparation_fails_when_agent_never_enrolls(deps: Deps, clock: FakeClock) -> None:
    instance = await activate(deps)
    clock.advance(hours=24)
    assert instance.status(clock.now()) == S.RUNNING_STATUS_PREPARATION_FAILED
    assert "did not enroll" in instance.status_error(clock.now())


async def test_enrollment_makes_instance_ready_idempotently(deps: Deps, clock: FakeClock) -> None:
    instance = await activate(deps)
    event = await enroll(deps, instance.instance_id, hostname="host-a")
    await handlers.handle_agent_enrolled(event, deps)
    after = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert after.status(clock.now()) == S.RUNNING_STATUS_READY
    assert after.hostname == "host-a"


async def test_the_agent_version_comes_from_enrollment_then_from_its_jobs(deps: Deps, clock: FakeClock) -> None:
    instance = await activate(deps)
    enrolled = events_pb2.AgentEnrolled(
        meta=meta(deps), account_id="acme", instance_id=instance.instance_id, hostname="h", agent_version="0.1.0"
    )
    await handlers.handle_agent_enrolled(enrolled, deps)
    shown = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert shown.agent_version == "0.1.0"
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    running = job_update(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_RUNNING)
    running.agent_version = "0.2.1"
    await handlers.handle_job_updated(running, deps)
    # An event from an older gateway carries no version: the known one stays.
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_COMPLETE)
    shown = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert shown.agent_version == "0.2.1"


async def test_enrollment_of_unknown_or_canceled_instance_is_ignored(deps: Deps, clock: FakeClock) -> None:
    await enroll(deps, "no-such-instance")
    instance = await activate(deps)
    await handlers.cancel_backup(deps, instance.instance_id, call=call("CancelBackup"))
    await enroll(deps, instance.instance_id)
    after = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert not after.enrolled
    assert after.status(clock.now()) == S.RUNNING_STATUS_CANCELED


async def test_get_and_list_instances(deps: Deps, clock: FakeClock) -> None:
    a = await activate(deps, region="r1", account_id="acme")
    clock.advance(1)
    b = await activate(deps, region="r2", account_id="acme")
    await activate(deps, region="r1", account_id="other")
    c = await activate(deps, region="r1", account_id="acme")
    await handlers.cancel_backup(deps, c.instance_id, call=call("CancelBackup"))
    listed = await handlers.list_instances(deps, "acme", "", call=call("ListInstances"))
    assert [i.instance_id for i in listed.instances] == [a.instance_id, b.instance_id]
    listed = await handlers.list_instances(deps, "acme", "r2", call=call("ListInstances"))
    assert [i.instance_id for i in listed.instances] == [b.instance_id]
    assert (await handlers.get_instance(deps, c.instance_id, call=call("GetInstance"))).canceled
    with pytest.raises(NotFound, match="instance nope not found"):
        await handlers.get_instance(deps, "nope", call=call("GetInstance"))
    with pytest.raises(InvalidArgument, match="instance_id is required"):
        await handlers.get_instance(deps, "", call=call("GetInstance"))


async def test_backup_now_creates_manual_job(deps: Deps, store: InMemorySchedulerStore, clock: FakeClock) -> None:
    instance = await active_instance(deps)
    await handlers.update_settings(
        deps, instance.instance_id, SettingsInput(roots=["/srv/www"]), ["roots"], call=call("UpdateSettings")
    )
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    assert job.status == common_pb2.JOB_STATUS_QUEUED
    [event] = store.events(JOB_REQUESTED)
    assert isinstance(event, events_pb2.JobRequested)
    assert event.trigger == events_pb2.JobRequested.TRIGGER_MANUAL
    assert event.job_id == job.job_id
    assert list(event.roots) == ["/srv/www"]
    assert event.priority == common_pb2.BACKUP_PRIORITY_LOW


async def test_backup_now_preconditions(deps: Deps) -> None:
    preparing = await activate(deps)
    with pytest.raises(FailedPrecondition, match="has not enrolled yet"):
        await handlers.run_backup_now(deps, preparing.instance_id, call=call("RunBackupNow"))
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    with pytest.raises(FailedPrecondition, match=f"backup job {job.job_id} .* is still QUEUED"):
        await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    await handlers.pause_backup(deps, instance.instance_id, call=call("PauseBackup"))
    with pytest.raises(FailedPrecondition, match="is paused; resume it first"):
        await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    await handlers.cancel_backup(deps, instance.instance_id, call=call("CancelBackup"))
    with pytest.raises(FailedPrecondition, match="was canceled"):
        await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    with pytest.raises(NotFound):
        await handlers.run_backup_now(deps, "missing", call=call("RunBackupNow"))


async def test_priority_change_applies_to_next_job(deps: Deps) -> None:
    instance = await active_instance(deps)
    first = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    await handlers.update_settings(
        deps,
        instance.instance_id,
        SettingsInput(priority=common_pb2.BACKUP_PRIORITY_HIGH),
        ["priority"],
        call=call("UpdateSettings"),
    )
    assert (await handlers.get_job(deps, first.job_id, call=call("GetJob"))).priority == common_pb2.BACKUP_PRIORITY_LOW
    await update_job(deps, first.job_id, instance.instance_id, common_pb2.JOB_STATUS_COMPLETE)
    second = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    assert second.priority == common_pb2.BACKUP_PRIORITY_HIGH


async def test_update_settings_changes_only_masked_fields(deps: Deps) -> None:
    instance = await active_instance(deps, minute=100)
    changed = await handlers.update_settings(
        deps,
        instance.instance_id,
        SettingsInput(keep_latest_version=False, daily_start_minute=999, priority=common_pb2.BACKUP_PRIORITY_HIGH),
        ["keep_latest_version"],
        call=call("UpdateSettings"),
    )
    assert changed.keep_latest_version is False
    assert changed.daily_start_minute == 100
    assert changed.priority == common_pb2.BACKUP_PRIORITY_LOW


async def test_activation_and_every_update_publish_the_settings(
    deps: Deps, store: InMemorySchedulerStore, clock: FakeClock
) -> None:
    instance, _ = await handlers.activate_backup(
        deps,
        account_id="acme",
        name="web-1",
        region="local",
        settings=SettingsInput(daily_start_minute=100, priority=common_pb2.BACKUP_PRIORITY_HIGH),
        call=call("ActivateBackup"),
    )
    [activated] = store.events(INSTANCE_SETTINGS_CHANGED)
    assert isinstance(activated, events_pb2.InstanceSettingsChanged)
    assert (
        activated.account_id,
        activated.instance_id,
        activated.keep_latest_version,
        activated.priority,
        activated.daily_start_minute,
    ) == ("acme", instance.instance_id, True, common_pb2.BACKUP_PRIORITY_HIGH, 100)
    assert from_timestamp(activated.meta.occurred_at) == clock.now()
    assert activated.meta.event_id and activated.meta.producer == "scheduler"

    clock.advance(60)
    await handlers.update_settings(
        deps,
        instance.instance_id,
        SettingsInput(keep_latest_version=False),
        ["keep_latest_version"],
        call=call("UpdateSettings"),
    )
    clock.advance(60)
    await handlers.update_settings(
        deps, instance.instance_id, SettingsInput(roots=["/srv"]), ["roots"], call=call("UpdateSettings")
    )
    _, disabled, unrelated = store.events(INSTANCE_SETTINGS_CHANGED)
    for event in (disabled, unrelated):  # every update carries all the settings as they are now
        assert isinstance(event, events_pb2.InstanceSettingsChanged)
        assert (event.keep_latest_version, event.priority, event.daily_start_minute) == (
            False,
            common_pb2.BACKUP_PRIORITY_HIGH,
            100,
        )
    assert [from_timestamp(e.meta.occurred_at) for e in (disabled, unrelated)] == [  # type: ignore[attr-defined]
        clock.now() - dt.timedelta(seconds=60),
        clock.now(),
    ]
    assert [key for topic, key, _ in store.outbox if topic == INSTANCE_SETTINGS_CHANGED] == [instance.instance_id] * 3


async def test_rejected_update_publishes_nothing(deps: Deps, store: InMemorySchedulerStore) -> None:
    instance = await active_instance(deps)
    before = len(store.events(INSTANCE_SETTINGS_CHANGED))
    with pytest.raises(InvalidArgument):
        await handlers.update_settings(
            deps, instance.instance_id, SettingsInput(priority=0), ["priority"], call=call("UpdateSettings")
        )
    assert len(store.events(INSTANCE_SETTINGS_CHANGED)) == before


@pytest.mark.parametrize(
    ("settings", "mask", "message"),
    [
        (SettingsInput(), [], "update_mask is empty"),
        (SettingsInput(), ["colour"], "unknown update_mask field"),
        (SettingsInput(daily_start_minute=1440), ["daily_start_minute"], r"\[0, 1440\)"),
        (SettingsInput(priority=0), ["priority"], "priority must be"),
    ],
)
async def test_update_settings_rejects_bad_input(
    deps: Deps, settings: SettingsInput, mask: list[str], message: str
) -> None:
    instance = await active_instance(deps)
    with pytest.raises(InvalidArgument, match=message):
        await handlers.update_settings(deps, instance.instance_id, settings, mask, call=call("UpdateSettings"))


async def test_canceled_instance_refuses_every_change(deps: Deps, store: InMemorySchedulerStore) -> None:
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    canceled = await handlers.cancel_backup(deps, instance.instance_id, call=call("CancelBackup"))
    assert canceled.canceled
    [event] = store.events(INSTANCE_DEACTIVATED)
    assert event.instance_id == instance.instance_id  # type: ignore[attr-defined]
    assert (await handlers.get_job(deps, job.job_id, call=call("GetJob"))).status == common_pb2.JOB_STATUS_CANCELED
    for operation, method in (
        (handlers.pause_backup, "PauseBackup"),
        (handlers.resume_backup, "ResumeBackup"),
        (handlers.cancel_backup, "CancelBackup"),
    ):
        with pytest.raises(FailedPrecondition, match="was canceled"):
            await operation(deps, instance.instance_id, call=call(method))
    with pytest.raises(FailedPrecondition, match="was canceled"):
        await handlers.update_settings(
            deps,
            instance.instance_id,
            SettingsInput(keep_latest_version=False),
            ["keep_latest_version"],
            call=call("UpdateSettings"),
        )


async def test_pause_and_resume_status(deps: Deps, clock: FakeClock) -> None:
    instance = await active_instance(deps)
    paused = await handlers.pause_backup(deps, instance.instance_id, call=call("PauseBackup"))
    assert paused.status(clock.now()) == S.RUNNING_STATUS_PAUSED
    assert (await handlers.pause_backup(deps, instance.instance_id, call=call("PauseBackup"))).paused  # idempotent
    resumed = await handlers.resume_backup(deps, instance.instance_id, call=call("ResumeBackup"))
    assert resumed.status(clock.now()) == S.RUNNING_STATUS_READY


async def test_job_lifecycle_drives_running_status(deps: Deps, clock: FakeClock) -> None:
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    status = (await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))).status
    assert status(clock.now()) == S.RUNNING_STATUS_READY
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_RUNNING, files=10)
    current = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert current.status(clock.now()) == S.RUNNING_STATUS_BACKING_UP
    assert (await handlers.get_job(deps, job.job_id, call=call("GetJob"))).stats.files_scanned == 10
    clock.advance(60)
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_COMPLETE, version_id="v1", files=20)
    done = await handlers.get_job(deps, job.job_id, call=call("GetJob"))
    assert (done.status, done.version_id, done.stats.files_scanned) == (common_pb2.JOB_STATUS_COMPLETE, "v1", 20)
    assert done.finished_at == clock.now()
    current = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert current.status(clock.now()) == S.RUNNING_STATUS_RUNNING


async def test_finished_job_never_moves_back(deps: Deps) -> None:
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_COMPLETE, version_id="v1")
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_RUNNING)
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_FAILED, error="late")
    after = await handlers.get_job(deps, job.job_id, call=call("GetJob"))
    assert (after.status, after.error) == (common_pb2.JOB_STATUS_COMPLETE, "")


def alerts(store: InMemorySchedulerStore) -> list[events_pb2.AlertRaised]:
    return [e for e in store.events(ALERT_RAISED) if isinstance(e, events_pb2.AlertRaised)]


async def test_redelivered_event_is_applied_once(deps: Deps, store: InMemorySchedulerStore) -> None:
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    failed = job_update(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_FAILED, error="disk gone")
    await handlers.handle_job_updated(failed, deps)
    await handlers.handle_job_updated(failed, deps)
    assert len(alerts(store)) == 1


async def test_failed_job_records_error_and_alerts(deps: Deps, store: InMemorySchedulerStore, clock: FakeClock) -> None:
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_FAILED, error="disk gone")
    after = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert after.last_error == "disk gone"
    assert after.status(clock.now()) == S.RUNNING_STATUS_READY
    [alert] = alerts(store)
    assert (alert.kind, alert.account_id, alert.instance_id, alert.instance_name, alert.job_id, alert.reason) == (
        events_pb2.ALERT_KIND_BACKUP_FAILED,
        "acme",
        instance.instance_id,
        "web-1",
        job.job_id,
        "disk gone",
    )
    assert [key for topic, key, _ in store.outbox if topic == ALERT_RAISED] == [instance.instance_id]
    second = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    await update_job(deps, second.job_id, instance.instance_id, common_pb2.JOB_STATUS_PARTIAL_COMPLETE)
    after = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert (after.last_error, after.status(clock.now())) == ("", S.RUNNING_STATUS_RUNNING)


async def test_partial_job_alerts_with_its_file_errors(deps: Deps, store: InMemorySchedulerStore) -> None:
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    update = job_update(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_PARTIAL_COMPLETE, version_id="v9")
    update.file_errors.extend([f"/data/f{i}: permission denied" for i in range(7)])
    update.stats.files_failed = 7
    await handlers.handle_job_updated(update, deps)
    [alert] = alerts(store)
    assert alert.kind == events_pb2.ALERT_KIND_BACKUP_PARTIAL
    assert alert.reason.startswith("7 file(s) could not be backed up; version v9 lacks them: /data/f0: permission")
    assert "/data/f4" in alert.reason and "/data/f5" not in alert.reason
    assert alert.reason.endswith(f"and 2 more (strongroom jobs get {job.job_id})")


async def test_complete_and_canceled_jobs_raise_no_alert(deps: Deps, store: InMemorySchedulerStore) -> None:
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_COMPLETE, version_id="v1")
    second = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    await update_job(deps, second.job_id, instance.instance_id, common_pb2.JOB_STATUS_CANCELED)
    assert alerts(store) == []


async def test_update_for_unknown_job_is_ignored(deps: Deps) -> None:
    await update_job(deps, "ghost", "i", common_pb2.JOB_STATUS_RUNNING)
    with pytest.raises(NotFound, match="backup job ghost not found"):
        await handlers.get_job(deps, "ghost", call=call("GetJob"))


async def test_cancel_queued_job_finishes_it(deps: Deps, store: InMemorySchedulerStore) -> None:
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    canceled = await handlers.cancel_job(deps, job.job_id, call=call("CancelJob"))
    assert canceled.status == common_pb2.JOB_STATUS_CANCELED
    assert len(store.events(JOB_CANCEL_REQUESTED)) == 1
    await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))  # no longer blocks a new job


async def test_cancel_running_job_waits_for_agent(deps: Deps, store: InMemorySchedulerStore, clock: FakeClock) -> None:
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_RUNNING)
    assert (
        await handlers.cancel_job(deps, job.job_id, call=call("CancelJob"))
    ).status == common_pb2.JOB_STATUS_CANCELING
    assert (
        await handlers.cancel_job(deps, job.job_id, call=call("CancelJob"))
    ).status == common_pb2.JOB_STATUS_CANCELING
    [event] = store.events(JOB_CANCEL_REQUESTED)
    assert event.job_id == job.job_id  # type: ignore[attr-defined]
    # a late progress report does not move it back to RUNNING
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_RUNNING, files=5)
    assert (await handlers.get_job(deps, job.job_id, call=call("GetJob"))).status == common_pb2.JOB_STATUS_CANCELING
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_CANCELED)
    assert (await handlers.get_job(deps, job.job_id, call=call("GetJob"))).status == common_pb2.JOB_STATUS_CANCELED
    current = await handlers.get_instance(deps, instance.instance_id, call=call("GetInstance"))
    assert current.status(clock.now()) == S.RUNNING_STATUS_READY


async def test_cancel_finished_job_fails(deps: Deps) -> None:
    instance = await active_instance(deps)
    job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_COMPLETE)
    with pytest.raises(FailedPrecondition, match="already finished \\(COMPLETE\\)"):
        await handlers.cancel_job(deps, job.job_id, call=call("CancelJob"))
    with pytest.raises(NotFound):
        await handlers.cancel_job(deps, "nope", call=call("CancelJob"))


async def test_list_jobs_newest_first_with_limit(deps: Deps, clock: FakeClock) -> None:
    instance = await active_instance(deps)
    ids = []
    for _ in range(3):
        job = await handlers.run_backup_now(deps, instance.instance_id, call=call("RunBackupNow"))
        await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_COMPLETE)
        ids.append(job.job_id)
        clock.advance(1)
    assert [
        j.job_id for j in (await handlers.list_jobs(deps, instance.instance_id, 0, call=call("ListJobs"))).jobs
    ] == ids[::-1]
    assert [
        j.job_id for j in (await handlers.list_jobs(deps, instance.instance_id, 2, call=call("ListJobs"))).jobs
    ] == ids[::-1][:2]
    with pytest.raises(NotFound):
        await handlers.list_jobs(deps, "nope", 0, call=call("ListJobs"))


async def test_jobs_list_in_pages_newest_first_ties_in_insertion_order(deps: Deps, clock: FakeClock) -> None:
    instance = await active_instance(deps)
    ids = await finished_jobs(deps, clock.advance, instance.instance_id, 7)
    pages = await every_job_page(deps, instance.instance_id, 2)
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [j for p in pages for j in p] == ids[::-1]
    # a page size that divides the list ends with an empty token on the page holding the last job
    assert [len(p) for p in await every_job_page(deps, instance.instance_id, 7)] == [7]
    with pytest.raises(InvalidArgument, match="page_size"):
        await handlers.list_jobs(deps, instance.instance_id, -1, call=call("ListJobs"))


@pytest.mark.parametrize("token", ["garbage!", "e30", "WyJub3QtYS10aW1lIiwgIngiXQ"])
async def test_a_forged_job_page_token_is_refused(deps: Deps, token: str) -> None:
    instance = await active_instance(deps)
    with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
        await handlers.list_jobs(deps, instance.instance_id, page_token=token, call=call("ListJobs"))


async def test_failed_transaction_leaves_no_event(deps: Deps, store: InMemorySchedulerStore) -> None:
    instance = await active_instance(deps)
    before = len(store.outbox)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.enqueue(
                INSTANCE_DEACTIVATED, instance.instance_id, events_pb2.InstanceDeactivated(instance_id="x")
            )
            raise RuntimeError("boom")
    assert len(store.outbox) == before


async def test_instances_list_in_pages_that_a_concurrent_activation_does_not_disturb(
    deps: Deps, clock: FakeClock
) -> None:
    ids = []
    for _ in range(5):
        ids.append((await activate(deps, account_id="acme")).instance_id)
        clock.advance(1)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await handlers.list_instances(
            deps, "acme", "", page_size=2, page_token=token, call=call("ListInstances")
        )
        seen += [i.instance_id for i in page.instances]
        pages += 1
        if pages == 1:
            await activate(deps, account_id="acme")  # a newcomer lands after the last page so far
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert seen[:5] == ids and len(seen) == 6 and pages == 3


@pytest.mark.parametrize("token", ["garbage!", "e30", "WyJub3QtYS10aW1lIiwgIngiXQ"])
async def test_a_forged_page_token_is_refused(deps: Deps, token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        await handlers.list_instances(deps, "acme", "", page_token=token, call=call("ListInstances"))


def test_enrollment_tokens_never_read_as_a_command_line_option() -> None:
    tokens = {handlers.new_enrollment_token() for _ in range(2000)}
    assert len(tokens) == 2000
    assert all(t.startswith("sre_") and len(t) == 47 and not t.startswith("-") for t in tokens)


async def test_a_stale_etag_changes_nothing(deps: Deps) -> None:
    await check_a_stale_etag_changes_nothing(deps)
