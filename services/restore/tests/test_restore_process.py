"""The ``strongroom-restore`` entry point as its own process, on real PostgreSQL and Kafka.

The catalog is a fake gRPC server in this test process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from restore_fixtures import restore_updated, serve_peer_fakes
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.restore.v1 import restore_pb2, restore_pb2_grpc
from strongroom_cli.stack import spawn
from strongroom_platform.admin import create_admin_token
from strongroom_platform.eventbus_kafka import KafkaPublisher, create_topics
from strongroom_platform.events import RESTORE_CANCEL_REQUESTED, RESTORE_REQUESTED, RESTORE_UPDATED
from strongroom_testing.fixtures import PgLogins
from strongroom_testing.pki import LocalPki
from strongroom_testing.records import find_record


def test_missing_catalog_address_fails_fast() -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "STRONGROOM_PG_DSN": "postgresql://127.0.0.1:1/none",
        "STRONGROOM_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "STRONGROOM_OBJECT_STORE": "file:/nonexistent",
        "STRONGROOM_INSECURE_PLAINTEXT": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "strongroom_restore"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "STRONGROOM_CATALOG_ADDR is required" in done.stderr


async def find_request(bootstrap: str, restore_job_id: str, within: float) -> tuple[bytes | None, bytes]:
    """The restore-requested record of the job (the topic is shared with other tests)."""
    key, value, _ = await find_record(
        bootstrap,
        RESTORE_REQUESTED,
        lambda _key, value: events_pb2.RestoreRequested.FromString(value).restore_job_id == restore_job_id,
        within=within,
    )
    return key, value


@pytest.mark.integration
async def test_process_creates_requests_and_follows_a_restore(
    pg_logins: PgLogins, kafka_bootstrap: str, local_pki: LocalPki, tmp_path: Path
) -> None:
    target = f"i-{uuid.uuid4().hex[:8]}"
    catalog, peers = await serve_peer_fakes(local_pki, target)
    await create_topics(kafka_bootstrap, [RESTORE_REQUESTED, RESTORE_CANCEL_REQUESTED, RESTORE_UPDATED])
    env = dict(
        os.environ,
        STRONGROOM_KAFKA_BOOTSTRAP=kafka_bootstrap,
        STRONGROOM_OBJECT_STORE=f"file:{tmp_path / 'objects'}",
        STRONGROOM_GRPC_LISTEN="127.0.0.1:0",
        STRONGROOM_CATALOG_ADDR=peers,
        STRONGROOM_SCHEDULER_ADDR=peers,
        PYTHONUNBUFFERED="1",
        **local_pki.env("restore"),
        **pg_logins.env("restore"),
    )
    token = await create_admin_token(pg_logins.owner, "acct")
    process = await spawn("restore", [sys.executable, "-m", "strongroom_restore"], env, tmp_path, announce="restore")
    try:
        async with local_pki.operator_channel(process.address, token) as channel:
            stub = restore_pb2_grpc.RestoreServiceStub(channel)  # type: ignore[misc]
            job = await stub.CreateRestoreJob(
                restore_pb2.CreateRestoreJobRequest(
                    point_id="p1", target_instance_id=target, include_paths=["etc"], target_path="/srv/restored"
                )
            )
            key, value = await find_request(kafka_bootstrap, job.restore_job_id, within=60)
            requested = events_pb2.RestoreRequested.FromString(value)
            assert key == target.encode()
            assert (requested.source_instance_id, requested.source_mount_point) == ("i-src", "/data")
            assert list(requested.include_paths) == ["etc"]

            update = restore_updated(
                job.restore_job_id,
                common_pb2.JOB_STATUS_PARTIAL_COMPLETE,
                at=dt.datetime.now(dt.UTC),
                target=target,
                error="1 file failed",
                files_restored=2,
            )
            async with KafkaPublisher(kafka_bootstrap, idempotent=True) as publisher:
                await publisher.publish(RESTORE_UPDATED, target.encode(), update.SerializeToString())
            request = restore_pb2.GetRestoreJobRequest(restore_job_id=job.restore_job_id)
            for _ in range(600):
                current = await stub.GetRestoreJob(request)
                if current.status != common_pb2.JOB_STATUS_QUEUED:
                    break
                await asyncio.sleep(0.1)
            assert current.status == common_pb2.JOB_STATUS_PARTIAL_COMPLETE, process.log_path.read_text()[-3000:]
            assert (current.error, current.stats.files_restored) == ("1 file failed", 2)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CancelRestoreJob(request)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        code = await process.stop()
        await catalog.stop(None)
    assert code == 0, process.log_path.read_text()[-3000:]
