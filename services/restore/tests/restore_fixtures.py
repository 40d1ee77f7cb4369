"""Builders shared by the restore service's tests."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import grpc
from strongroom.agent.v1 import gateway_pb2
from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from strongroom_platform.auth import CallAuth, Principal, Role, operator
from strongroom_platform.clock import utc
from strongroom_platform.events import new_meta
from strongroom_platform.runtime import start_grpc_server
from strongroom_platform.testing import call_for
from strongroom_restore.model import CatalogPoint, InstanceFacts, RestoreJob
from strongroom_testing.pki import LocalPki

T0 = utc(2026, 3, 1, 12)
POINT = CatalogPoint(
    point_id="p1", instance_id="i-src", account_id="acct", mount_point="/data", manifest_key="manifests/p1"
)
READY = scheduler_pb2.RUNNING_STATUS_READY


def instance(instance_id: str, *, account: str = "acct", region: str = "r1", status: int = READY) -> InstanceFacts:
    """An instance as the scheduler describes it; enrolled unless it is still preparing."""
    enrolled = status not in (scheduler_pb2.RUNNING_STATUS_PREPARING, scheduler_pb2.RUNNING_STATUS_PREPARATION_FAILED)
    return InstanceFacts(instance_id=instance_id, account_id=account, region=region, status=status, enrolled=enrolled)


# The point's own instance and two more of its account and region, all with an enrolled agent.
INSTANCES = (instance("i-src"), instance("i-dst"), instance("i-other"))
RESTORE = "/strongroom.restore.v1.RestoreService/"
ADMIN = operator("token:admin-of-acct", {"acct": Role.ADMIN})


def call(method: str, principal: Principal = ADMIN) -> CallAuth:
    """The ``CallAuth`` of ``principal`` (default: an admin of acct) calling the restore service's ``method``."""
    return call_for(RESTORE + method, principal)


def job(
    restore_job_id: str = "r1",
    *,
    status: int = common_pb2.JOB_STATUS_QUEUED,
    target: str = "i-dst",
    source: str = "i-src",
    created_at: dt.datetime = T0,
) -> RestoreJob:
    return RestoreJob(
        restore_job_id=restore_job_id,
        account_id="acct",
        point_id="p1",
        source_instance_id=source,
        target_instance_id=target,
        status=status,
        include_paths=("etc", "home/a b"),
        exclude_paths=("etc/secret",),
        target_path="/srv/restore",
        conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE,
        created_at=created_at,
    )


def restore_updated(
    restore_job_id: str = "r1",
    status: int = common_pb2.JOB_STATUS_RUNNING,
    *,
    at: dt.datetime = T0,
    target: str = "i-dst",
    error: str = "",
    files_restored: int | None = None,
) -> events_pb2.RestoreUpdated:
    event = events_pb2.RestoreUpdated(
        meta=new_meta("agent-gateway", at),
        account_id="acct",
        restore_job_id=restore_job_id,
        target_instance_id=target,
        status=status,  # type: ignore[arg-type]
        error=error,
    )
    if files_restored is not None:
        event.stats.CopyFrom(common_pb2.JobStats(files_restored=files_restored, bytes_restored=files_restored * 10))
    return event


async def eventually(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    """Wait until ``condition()`` holds (polling: background tasks have no event to await)."""
    for _ in range(int(within / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


class FakeCatalogService(catalog_pb2_grpc.CatalogServiceServicer):
    """Knows point p1; any other id is NOT_FOUND, id 'broken' fails INTERNAL, an id with a NUL
    INVALID_ARGUMENT (as the catalog's error mapping answers)."""

    async def GetPoint(
        self, request: catalog_pb2.GetPointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.Point:
        if request.point_id == "broken":
            await context.abort(grpc.StatusCode.INTERNAL, "database on fire")
        if "\x00" in request.point_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a text field contains a NUL character")
        if request.point_id != "p1":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"point {request.point_id!r} not found")
        return catalog_pb2.Point(
            point_id="p1",
            version_id="v1",
            instance_id="i-src",
            account_id="acct",
            filesystem=common_pb2.Filesystem(mount_point="/data"),
            manifest_key="manifests/p1",
        )

    async def ListVersions(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    async def BrowsePoint(self, request: Any, context: Any) -> Any:
        raise NotImplementedError


class FakeSchedulerService(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Knows instance i-src (and ``known``); any other id is NOT_FOUND, id 'broken' fails INTERNAL."""

    def __init__(self, *known: str) -> None:
        self.known = {"i-src", *known}

    async def GetInstance(
        self, request: scheduler_pb2.GetInstanceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scheduler_pb2.Instance:
        if request.instance_id == "broken":
            await context.abort(grpc.StatusCode.INTERNAL, "database on fire")
        if "\x00" in request.instance_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a text field contains a NUL character")
        if request.instance_id not in self.known:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"instance {request.instance_id} not found")
        return scheduler_pb2.Instance(
            instance_id=request.instance_id,
            account_id="acct",
            name="web-1",
            region="r1",
            status=scheduler_pb2.RUNNING_STATUS_PAUSED,
            agent_enrolled=True,
        )


async def serve_peer_fakes(pki: LocalPki, *instances: str) -> tuple[grpc.aio.Server, str]:
    """The catalog's and the scheduler's fakes on one internal (mutual-TLS) listener; (server, address)."""

    def add(server: grpc.aio.Server) -> None:
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(FakeCatalogService(), server)
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(FakeSchedulerService(*instances), server)

    server, port = await start_grpc_server("127.0.0.1:0", add, credentials=pki.peer_credentials("catalog"))
    return server, f"127.0.0.1:{port}"
