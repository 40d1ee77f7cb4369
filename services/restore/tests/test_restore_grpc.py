"""RestoreService over a real in-process gRPC server, and the gRPC catalog client against a fake catalog."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from restore_fixtures import INSTANCES, POINT, T0, FakeCatalogService, FakeSchedulerService, instance, restore_updated
from strongroom.agent.v1 import gateway_pb2
from strongroom.catalog.v1 import catalog_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.restore.v1 import restore_pb2, restore_pb2_grpc
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from strongroom_platform.auth import Role
from strongroom_platform.runtime import start_grpc_server
from strongroom_platform.testing import FakeClock, serve_authenticated
from strongroom_restore.catalog_client import GrpcCatalogClient
from strongroom_restore.errors import CatalogUnavailable, InvalidArgument, SchedulerUnavailable
from strongroom_restore.grpc_api import RestoreServicer, register
from strongroom_restore.handlers import handle_restore_updated
from strongroom_restore.scheduler_client import SchedulerInstanceDirectory
from strongroom_restore.testing import FakeCatalogClient, FakeInstanceDirectory, InMemoryRestoreStore

S = common_pb2


@pytest.fixture
def repo() -> InMemoryRestoreStore:
    return InMemoryRestoreStore()


@pytest.fixture
def catalog() -> FakeCatalogClient:
    return FakeCatalogClient(POINT)


@pytest.fixture
async def stub(
    repo: InMemoryRestoreStore, catalog: FakeCatalogClient
) -> AsyncIterator[restore_pb2_grpc.RestoreServiceAsyncStub]:
    servicer = RestoreServicer(repo, catalog, FakeClock(T0), FakeInstanceDirectory(*INSTANCES))
    async with serve_authenticated(register(servicer), {"acct": Role.ADMIN}) as channel:
        yield restore_pb2_grpc.RestoreServiceStub(channel)  # type: ignore[misc]


async def expect_error(call: object, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code
    assert message in (info.value.details() or "")


async def test_create_get_list_cancel(
    stub: restore_pb2_grpc.RestoreServiceAsyncStub, repo: InMemoryRestoreStore
) -> None:
    created = await stub.CreateRestoreJob(
        restore_pb2.CreateRestoreJobRequest(point_id="p1", include_paths=["etc"], target_path="/srv/r")
    )
    assert created.status == S.JOB_STATUS_QUEUED
    assert (created.source_instance_id, created.target_instance_id) == ("i-src", "i-src")
    assert created.conflict_policy == gateway_pb2.CONFLICT_POLICY_SKIP
    assert list(created.include_paths) == ["etc"] and created.target_path == "/srv/r"
    assert created.created_at.ToDatetime(tzinfo=dt.UTC) == T0 and not created.HasField("finished_at")

    got = await stub.GetRestoreJob(restore_pb2.GetRestoreJobRequest(restore_job_id=created.restore_job_id))
    assert got == created
    listed = await stub.ListRestoreJobs(restore_pb2.ListRestoreJobsRequest(instance_id="i-src"))
    assert [j.restore_job_id for j in listed.jobs] == [created.restore_job_id] and listed.next_page_token == ""

    canceling = await stub.CancelRestoreJob(restore_pb2.GetRestoreJobRequest(restore_job_id=created.restore_job_id))
    assert canceling.status == S.JOB_STATUS_CANCELING

    canceled = restore_updated(
        created.restore_job_id, S.JOB_STATUS_CANCELED, at=T0 + dt.timedelta(minutes=1), target="i-src"
    )
    canceled.failed_files.add(path="etc/passwd", reason="chunk 3f of this file is damaged in storage (y)")
    await handle_restore_updated(canceled, repo=repo)
    finished = await stub.GetRestoreJob(restore_pb2.GetRestoreJobRequest(restore_job_id=created.restore_job_id))
    assert finished.status == S.JOB_STATUS_CANCELED
    assert [(f.path, f.reason) for f in finished.failed_files] == [
        ("etc/passwd", "chunk 3f of this file is damaged in storage (y)")
    ]
    assert finished.finished_at.ToDatetime(tzinfo=dt.UTC) == T0 + dt.timedelta(minutes=1)
    await expect_error(
        stub.CancelRestoreJob(restore_pb2.GetRestoreJobRequest(restore_job_id=created.restore_job_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "already finished (CANCELED)",
    )


async def test_stats_are_returned(stub: restore_pb2_grpc.RestoreServiceAsyncStub, repo: InMemoryRestoreStore) -> None:
    created = await stub.CreateRestoreJob(restore_pb2.CreateRestoreJobRequest(point_id="p1"))
    await handle_restore_updated(
        restore_updated(created.restore_job_id, S.JOB_STATUS_RUNNING, target="i-src", files_restored=3), repo=repo
    )
    got = await stub.GetRestoreJob(restore_pb2.GetRestoreJobRequest(restore_job_id=created.restore_job_id))
    assert (got.stats.files_restored, got.stats.bytes_restored) == (3, 30)


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (restore_pb2.CreateRestoreJobRequest(), grpc.StatusCode.INVALID_ARGUMENT, "point_id is required"),
        (
            restore_pb2.CreateRestoreJobRequest(point_id="p1", include_paths=["../etc"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "must not contain '..'",
        ),
        (
            restore_pb2.CreateRestoreJobRequest(point_id="p1", target_path="relative"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "must be an absolute directory",
        ),
        (
            restore_pb2.CreateRestoreJobRequest(point_id="nope"),
            grpc.StatusCode.NOT_FOUND,
            "backup point 'nope' not found",
        ),
    ],
)
async def test_create_failures(
    stub: restore_pb2_grpc.RestoreServiceAsyncStub,
    request_: restore_pb2.CreateRestoreJobRequest,
    code: grpc.StatusCode,
    message: str,
) -> None:
    await expect_error(stub.CreateRestoreJob(request_), code, message)


async def test_catalog_outage_is_unavailable(
    stub: restore_pb2_grpc.RestoreServiceAsyncStub, catalog: FakeCatalogClient
) -> None:
    catalog.unavailable = True
    await expect_error(
        stub.CreateRestoreJob(restore_pb2.CreateRestoreJobRequest(point_id="p1")),
        grpc.StatusCode.UNAVAILABLE,
        "catalog unavailable",
    )


async def test_lookup_failures(stub: restore_pb2_grpc.RestoreServiceAsyncStub) -> None:
    await expect_error(
        stub.GetRestoreJob(restore_pb2.GetRestoreJobRequest(restore_job_id="nope")),
        grpc.StatusCode.NOT_FOUND,
        "restore job 'nope' not found",
    )
    await expect_error(
        stub.CancelRestoreJob(restore_pb2.GetRestoreJobRequest(restore_job_id="nope")),
        grpc.StatusCode.NOT_FOUND,
        "restore job 'nope' not found",
    )
    await expect_error(
        stub.ListRestoreJobs(restore_pb2.ListRestoreJobsRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "instance_id is required",
    )
    await expect_error(
        stub.ListRestoreJobs(restore_pb2.ListRestoreJobsRequest(instance_id="i-src", page_token="garbage!")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token is not one this service issued; start again without it",
    )


# --- GrpcCatalogClient ---------------------------------------------------------


async def test_grpc_catalog_client() -> None:
    def add(server: grpc.aio.Server) -> None:
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(FakeCatalogService(), server)

    server, port = await start_grpc_server("127.0.0.1:0", add)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = GrpcCatalogClient(channel)
            assert await client.get_point("p1") == POINT
            assert await client.get_point("p2") is None
            with pytest.raises(CatalogUnavailable, match="database on fire"):
                await client.get_point("broken")
            # the caller's bad id is the caller's error, not an outage (was 503 through the edge)
            with pytest.raises(InvalidArgument, match="point_id: a text field contains a NUL"):
                await client.get_point("p\x00")
    finally:
        await server.stop(None)


async def test_grpc_catalog_client_when_catalog_is_down() -> None:
    server, port = await start_grpc_server("127.0.0.1:0", lambda server: None)
    await server.stop(None)  # the port is now closed
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = GrpcCatalogClient(channel, timeout=2)
        with pytest.raises(CatalogUnavailable, match="could not look up point 'p1'"):
            await client.get_point("p1")


async def test_a_refused_target_is_failed_precondition_over_grpc(
    stub: restore_pb2_grpc.RestoreServiceAsyncStub, repo: InMemoryRestoreStore
) -> None:
    await expect_error(
        stub.CreateRestoreJob(restore_pb2.CreateRestoreJobRequest(point_id="p1", target_instance_id="i-dst")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "confirm with confirm_original_path_on_other_instance",
    )
    await expect_error(
        stub.CreateRestoreJob(restore_pb2.CreateRestoreJobRequest(point_id="p1", target_instance_id="i-nope")),
        grpc.StatusCode.NOT_FOUND,
        "instance i-nope not found",
    )
    assert repo.outbox == []


# --- SchedulerInstanceDirectory ------------------------------------------------


async def test_scheduler_instance_directory() -> None:
    def add(server: grpc.aio.Server) -> None:
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(FakeSchedulerService(), server)

    server, port = await start_grpc_server("127.0.0.1:0", add)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            directory = SchedulerInstanceDirectory(channel)
            assert await directory.get_instance("i-src") == instance(
                "i-src", status=scheduler_pb2.RUNNING_STATUS_PAUSED
            )
            assert await directory.get_instance("i-other") is None
            with pytest.raises(SchedulerUnavailable, match="database on fire"):
                await directory.get_instance("broken")
            with pytest.raises(InvalidArgument, match="instance_id: a text field contains a NUL"):
                await directory.get_instance("i\x00")
    finally:
        await server.stop(None)


async def test_scheduler_instance_directory_when_scheduler_is_down() -> None:
    server, port = await start_grpc_server("127.0.0.1:0", lambda server: None)
    await server.stop(None)  # the port is now closed
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        directory = SchedulerInstanceDirectory(channel, timeout=2)
        with pytest.raises(SchedulerUnavailable, match="could not look up instance 'i-src'"):
            await directory.get_instance("i-src")
