"""The whole restore process in-process: real PostgreSQL, in-memory bus, a fake catalog over gRPC."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from restore_fixtures import eventually, restore_updated, serve_peer_fakes
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.restore.v1 import restore_pb2, restore_pb2_grpc
from strongroom_platform.admin import create_admin_token
from strongroom_platform.clock import SystemClock
from strongroom_platform.events import RESTORE_REQUESTED, RESTORE_UPDATED
from strongroom_platform.settings import PlatformSettings
from strongroom_platform.testing import InMemoryEventBus
from strongroom_restore.bootstrap import run
from strongroom_restore.settings import Settings
from strongroom_testing.fixtures import PgLogins
from strongroom_testing.pki import LocalPki

pytestmark = pytest.mark.integration


async def test_create_request_and_update(
    pg_logins: PgLogins, local_pki: LocalPki, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog_server, peers = await serve_peer_fakes(local_pki, "i-dst")
    platform = PlatformSettings(
        pg_dsn=pg_logins.service("restore"),
        pg_migrate_dsn=pg_logins.owner,
        kafka_bootstrap="unused:9092",
        kafka_idempotent=False,
        object_store="file:x",
        s3=None,
        otel="none",
        tls=local_pki.tls("restore"),
    )
    settings = Settings(platform=platform, grpc_listen="127.0.0.1:0", catalog_addr=peers, scheduler_addr=peers)
    token = await create_admin_token(pg_logins.owner, "acct")
    bus = InMemoryEventBus()
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop, clock=SystemClock(), publisher=bus, consumer_factory=bus.consumer))
    output: list[str] = []

    def listening() -> bool:
        output.extend(capsys.readouterr().out.splitlines())
        assert not task.done(), task
        return any(line.startswith("LISTENING restore 127.0.0.1:") for line in output)

    try:
        await eventually(listening, within=30)
        address = next(line for line in output if line.startswith("LISTENING")).split()[-1]
        async with local_pki.operator_channel(address, token) as channel:
            stub: restore_pb2_grpc.RestoreServiceAsyncStub = restore_pb2_grpc.RestoreServiceStub(channel)  # type: ignore[assignment]
            job = await stub.CreateRestoreJob(
                restore_pb2.CreateRestoreJobRequest(
                    point_id="p1", target_instance_id="i-dst", target_path="/srv/restored"
                )
            )
            await eventually(lambda: RESTORE_REQUESTED in bus.topics, within=30)
            [(key, value)] = bus.topics[RESTORE_REQUESTED]
            requested = events_pb2.RestoreRequested.FromString(value)
            assert key == b"i-dst" and requested.restore_job_id == job.restore_job_id
            assert (requested.manifest_key, requested.source_mount_point) == ("manifests/p1", "/data")

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateRestoreJob(restore_pb2.CreateRestoreJobRequest(point_id="p2"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND

            done = restore_updated(
                job.restore_job_id,
                common_pb2.JOB_STATUS_COMPLETE,
                at=dt.datetime.now(dt.UTC),
                target="i-dst",
                files_restored=4,
            )
            await bus.publish(RESTORE_UPDATED, b"i-dst", done.SerializeToString())
            request = restore_pb2.GetRestoreJobRequest(restore_job_id=job.restore_job_id)
            for _ in range(1000):
                current = await stub.GetRestoreJob(request)
                if current.status == common_pb2.JOB_STATUS_COMPLETE:
                    break
                await asyncio.sleep(0.01)
            assert current.status == common_pb2.JOB_STATUS_COMPLETE and current.stats.files_restored == 4
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await catalog_server.stop(None)
