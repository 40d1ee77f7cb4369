"""The ``strongroom-catalog`` entry point as its own process, on real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from catalog_fixtures import point_created, sample_manifest
from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from strongroom_cli.stack import spawn
from strongroom_platform.admin import create_admin_token
from strongroom_platform.clock import SystemClock
from strongroom_platform.eventbus_kafka import KafkaPublisher, create_topics
from strongroom_platform.events import POINT_CREATED, VERSION_EXPIRED
from strongroom_platform.objectstore_fs import FilesystemObjectStore
from strongroom_testing.fixtures import PgLogins
from strongroom_testing.pki import LocalPki


def test_missing_setting_fails_fast_with_its_name(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "STRONGROOM_OBJECT_STORE": f"file:{tmp_path}"}
    done = subprocess.run(
        [sys.executable, "-m", "strongroom_catalog"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "STRONGROOM_PG_DSN is required" in done.stderr


@pytest.mark.integration
async def test_process_indexes_a_point_from_kafka(
    pg_logins: PgLogins, kafka_bootstrap: str, local_pki: LocalPki, tmp_path: Path
) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    store = FilesystemObjectStore(objects, SystemClock())
    point_id = f"p-{uuid.uuid4().hex[:8]}"
    instance_id = f"i-{uuid.uuid4().hex[:8]}"
    await store.put(f"manifests/{point_id}", sample_manifest())
    await create_topics(kafka_bootstrap, [POINT_CREATED, VERSION_EXPIRED])
    env = dict(
        os.environ,
        STRONGROOM_KAFKA_BOOTSTRAP=kafka_bootstrap,
        STRONGROOM_OBJECT_STORE=f"file:{objects}",
        STRONGROOM_GRPC_LISTEN="127.0.0.1:0",
        PYTHONUNBUFFERED="1",
        **local_pki.env("catalog"),
        **pg_logins.env("catalog"),
    )
    token = await create_admin_token(pg_logins.owner, "acct")
    process = await spawn("catalog", [sys.executable, "-m", "strongroom_catalog"], env, tmp_path, announce="catalog")
    try:
        event = point_created(point_id, f"v-{point_id}", instance_id)
        async with KafkaPublisher(kafka_bootstrap, idempotent=True) as publisher:
            await publisher.publish(POINT_CREATED, instance_id.encode(), event.SerializeToString())
        async with local_pki.operator_channel(process.address, token) as channel:
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)  # type: ignore[misc]
            point = catalog_pb2.Point()
            for _ in range(600):
                try:
                    point = await stub.GetPoint(catalog_pb2.GetPointRequest(point_id=point_id))
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
                if point.browsable:
                    break
                await asyncio.sleep(0.1)
            assert point.browsable, (process.log_path.read_text())[-3000:]
            page = await stub.BrowsePoint(catalog_pb2.BrowsePointRequest(point_id=point_id, path="home"))
            assert [e.path for e in page.entries] == ["home/a.txt", "home/link"]
    finally:
        code = await process.stop()
    assert code == 0, process.log_path.read_text()[-3000:]
