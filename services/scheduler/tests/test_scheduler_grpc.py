from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from scheduler_helpers import enroll, update_job
from strongroom.common.v1 import common_pb2
from strongroom.scheduler.v1 import scheduler_pb2 as S
from strongroom.scheduler.v1 import scheduler_pb2_grpc
from strongroom_platform.auth import Role
from strongroom_platform.testing import FakeClock, serve_authenticated
from strongroom_scheduler.grpc_api import SchedulerServicer
from strongroom_scheduler.handlers import Deps
from strongroom_scheduler.schedule import Admission

Stub = scheduler_pb2_grpc.SchedulerServiceStub


@pytest.fixture
async def stub(deps: Deps) -> AsyncIterator[Stub]:
    def register(server: grpc.aio.Server) -> None:
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerServicer(deps), server)

    async with serve_authenticated(register, {"acme": Role.ADMIN}) as channel:
        yield Stub(channel)


async def activate(stub: Stub, **settings: object) -> S.ActivateBackupResponse:
    request = S.ActivateBackupRequest(account_id="acme", name="web-1", region="cn-hangzhou")
    if settings:
        request.settings.CopyFrom(S.BackupSettings(**settings))  # type: ignore[arg-type]
        request.has_settings = True
    return await stub.ActivateBackup(request)


async def expect_error(call: object, code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code
    assert text in (info.value.details() or "")


async def test_activate_returns_token_and_preparing_instance(stub: Stub) -> None:
    response = await activate(stub)
    assert response.enrollment_token
    instance = response.instance
    assert instance.status == S.RUNNING_STATUS_PREPARING
    assert instance.settings.priority == common_pb2.BACKUP_PRIORITY_LOW
    assert instance.settings.keep_latest_version
    assert instance.settings.daily_start_minute < 360
    assert instance.HasField("next_backup_at") and instance.HasField("activated_at")
    fetched = await stub.GetInstance(S.GetInstanceRequest(instance_id=instance.instance_id))
    assert fetched == instance


async def test_activate_with_settings_takes_them_literally_but_defaults_priority(stub: Stub) -> None:
    response = await activate(stub, daily_start_minute=0, keep_latest_version=False, roots=["/data"])
    settings = response.instance.settings
    assert (settings.priority, settings.daily_start_minute, settings.keep_latest_version, list(settings.roots)) == (
        common_pb2.BACKUP_PRIORITY_LOW,
        0,
        False,
        ["/data"],
    )


async def test_list_instances_by_region(stub: Stub) -> None:
    a = (await activate(stub)).instance
    listed = await stub.ListInstances(S.ListInstancesRequest(account_id="acme", region="cn-hangzhou"))
    assert [i.instance_id for i in listed.instances] == [a.instance_id]
    assert not (await stub.ListInstances(S.ListInstancesRequest(account_id="acme", region="eu"))).instances


async def test_full_operator_flow(stub: Stub, deps: Deps, clock: FakeClock) -> None:
    instance = (await activate(stub)).instance
    ref = S.InstanceRef(instance_id=instance.instance_id)
    assert not instance.agent_enrolled
    await enroll(deps, instance.instance_id)
    enrolled = await stub.GetInstance(S.GetInstanceRequest(instance_id=instance.instance_id))
    assert (enrolled.status, enrolled.agent_enrolled) == (S.RUNNING_STATUS_READY, True)
    job = await stub.RunBackupNow(S.RunBackupNowRequest(instance_id=instance.instance_id))
    assert job.status == common_pb2.JOB_STATUS_QUEUED
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_RUNNING)
    assert (await stub.CancelJob(S.GetJobRequest(job_id=job.job_id))).status == common_pb2.JOB_STATUS_CANCELING
    await update_job(deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_CANCELED)
    fetched = await stub.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert fetched.status == common_pb2.JOB_STATUS_CANCELED and fetched.HasField("finished_at")
    jobs = await stub.ListJobs(S.ListJobsRequest(instance_id=instance.instance_id))
    assert [j.job_id for j in jobs.jobs] == [job.job_id] and jobs.next_page_token == ""
    newer = await stub.RunBackupNow(S.RunBackupNowRequest(instance_id=instance.instance_id))
    first = await stub.ListJobs(S.ListJobsRequest(instance_id=instance.instance_id, limit=1))  # the older field
    assert [j.job_id for j in first.jobs] == [newer.job_id] and first.next_page_token
    rest = await stub.ListJobs(
        S.ListJobsRequest(instance_id=instance.instance_id, page_size=1, page_token=first.next_page_token)
    )
    assert ([j.job_id for j in rest.jobs], rest.next_page_token) == ([job.job_id], "")
    bad = S.ListJobsRequest(instance_id=instance.instance_id, page_token="garbage!")
    await expect_error(
        stub.ListJobs(bad), grpc.StatusCode.INVALID_ARGUMENT, "page_token is not one this service issued"
    )
    await update_job(deps, newer.job_id, instance.instance_id, common_pb2.JOB_STATUS_CANCELED)
    paused = await stub.PauseBackup(ref)
    assert paused.status == S.RUNNING_STATUS_PAUSED and not paused.HasField("next_backup_at")
    assert (await stub.ResumeBackup(ref)).status == S.RUNNING_STATUS_READY
    updated = await stub.UpdateSettings(
        S.UpdateSettingsRequest(
            instance_id=instance.instance_id,
            settings=S.BackupSettings(priority=common_pb2.BACKUP_PRIORITY_HIGH, daily_start_minute=1439),
            update_mask=["priority", "daily_start_minute"],
        )
    )
    assert (updated.settings.priority, updated.settings.daily_start_minute) == (common_pb2.BACKUP_PRIORITY_HIGH, 1439)
    canceled = await stub.CancelBackup(ref)
    assert (canceled.status, canceled.agent_enrolled) == (S.RUNNING_STATUS_CANCELED, True)


async def test_user_facing_errors_map_to_status_codes(stub: Stub, deps: Deps) -> None:
    codes = grpc.StatusCode
    await expect_error(
        stub.ActivateBackup(S.ActivateBackupRequest(name="", region="r")), codes.INVALID_ARGUMENT, "name is required"
    )
    await expect_error(activate(stub, daily_start_minute=1440), codes.INVALID_ARGUMENT, "daily_start_minute")
    await expect_error(stub.GetInstance(S.GetInstanceRequest(instance_id="x")), codes.NOT_FOUND, "instance x not found")
    await expect_error(stub.GetJob(S.GetJobRequest(job_id="j")), codes.NOT_FOUND, "backup job j not found")
    await expect_error(stub.CancelJob(S.GetJobRequest()), codes.INVALID_ARGUMENT, "job_id is required")
    await expect_error(stub.ListJobs(S.ListJobsRequest(instance_id="x")), codes.NOT_FOUND, "not found")
    instance = (await activate(stub)).instance
    iid = instance.instance_id
    await expect_error(
        stub.RunBackupNow(S.RunBackupNowRequest(instance_id=iid)), codes.FAILED_PRECONDITION, "has not enrolled yet"
    )
    await expect_error(
        stub.UpdateSettings(S.UpdateSettingsRequest(instance_id=iid)), codes.INVALID_ARGUMENT, "update_mask is empty"
    )
    await expect_error(
        stub.UpdateSettings(
            S.UpdateSettingsRequest(
                instance_id=iid, settings=S.BackupSettings(daily_start_minute=2000), update_mask=["daily_start_minute"]
            )
        ),
        codes.INVALID_ARGUMENT,
        "got 2000",
    )
    await enroll(deps, iid)
    job = await stub.RunBackupNow(S.RunBackupNowRequest(instance_id=iid))
    await expect_error(
        stub.RunBackupNow(S.RunBackupNowRequest(instance_id=iid)), codes.FAILED_PRECONDITION, "still QUEUED"
    )
    await update_job(deps, job.job_id, iid, common_pb2.JOB_STATUS_COMPLETE)
    await expect_error(
        stub.CancelJob(S.GetJobRequest(job_id=job.job_id)), codes.FAILED_PRECONDITION, "already finished"
    )
    await stub.PauseBackup(S.InstanceRef(instance_id=iid))
    await expect_error(stub.RunBackupNow(S.RunBackupNowRequest(instance_id=iid)), codes.FAILED_PRECONDITION, "paused")
    await stub.CancelBackup(S.InstanceRef(instance_id=iid))
    for call in (stub.PauseBackup, stub.ResumeBackup, stub.CancelBackup):
        await expect_error(call(S.InstanceRef(instance_id=iid)), codes.FAILED_PRECONDITION, "was canceled")


async def test_get_admission_carries_the_figures_and_the_cap(stub: Stub, deps: Deps, clock: FakeClock) -> None:
    instance = (await activate(stub, daily_start_minute=0)).instance
    await enroll(deps, instance.instance_id)
    uncapped = await stub.GetAdmission(S.GetAdmissionRequest(account_id="acme"))
    assert (uncapped.running_backups, uncapped.waiting_backups, uncapped.max_concurrent_backups) == (0, 0, 0)
    assert not uncapped.HasField("oldest_waiting_since")
    deps.admission = Admission(max_concurrent=3, window=dt.timedelta(hours=2))
    clock.set(instance.next_backup_at.ToDatetime(dt.UTC))
    due = await stub.GetAdmission(S.GetAdmissionRequest(region="cn-hangzhou"))  # the token's only account
    assert (due.running_backups, due.waiting_backups, due.max_concurrent_backups) == (0, 1, 3)
    assert (due.admission_window_seconds, due.oldest_waiting_since) == (7200, instance.next_backup_at)
    await stub.RunBackupNow(S.RunBackupNowRequest(instance_id=instance.instance_id))
    running = await stub.GetAdmission(S.GetAdmissionRequest(account_id="acme", region="cn-hangzhou"))
    assert (running.running_backups, running.waiting_backups) == (1, 0)
    assert (await stub.GetAdmission(S.GetAdmissionRequest(account_id="acme", region="eu"))).running_backups == 0
    await expect_error(
        stub.GetAdmission(S.GetAdmissionRequest(account_id="acme", region="eu ")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "surrounding spaces",
    )
