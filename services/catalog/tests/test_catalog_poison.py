"""Poison never stalls (ADR 0026), on real Kafka and PostgreSQL with the catalog as its own process.

A `point-created` the catalog can never store (a NUL byte in the mount point: PostgreSQL text
cannot hold it), published past the gateway's validation, fails the same way on every attempt. The
catalog dead-letters it after a bounded number of attempts and raises an `alert-raised` event; the
point of another account behind it is indexed within seconds, and the next point of the poisoned
instance is indexed in full.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from catalog_fixtures import point_created, sample_manifest
from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from strongroom.events.v1 import events_pb2
from strongroom_cli.stack import spawn
from strongroom_platform.admin import create_admin_token
from strongroom_platform.clock import SystemClock
from strongroom_platform.eventbus_kafka import DLQ_ERROR_HEADER, KafkaPublisher, create_topics, dlq_topic
from strongroom_platform.events import ALERT_RAISED, POINT_CREATED, VERSION_EXPIRED
from strongroom_platform.objectstore_fs import FilesystemObjectStore
from strongroom_testing.fixtures import PgLogins
from strongroom_testing.pki import LocalPki
from strongroom_testing.records import find_record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# What "a few seconds" means here: five attempts with backoff 0.1 + 0.2 + 0.4 + 0.8 s, plus the
# commit interval and polling; a stalled partition would never get there.
MAX_DELAY_SECONDS = 8.0


async def _browsable(stub: catalog_pb2_grpc.CatalogServiceAsyncStub, point_id: str, within: float) -> float:
    """Seconds until the point is browsable (fails after ``within``)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        try:
            point = await stub.GetPoint(catalog_pb2.GetPointRequest(point_id=point_id))
            if point.browsable:
                return time.monotonic() - started
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
        await asyncio.sleep(0.05)
    raise AssertionError(f"point {point_id} not browsable after {within:.0f}s")


async def test_a_poisonous_point_is_dead_lettered_and_does_not_hold_up_others(
    pg_logins: PgLogins, kafka_bootstrap: str, local_pki: LocalPki, tmp_path: Path
) -> None:
    objects = tmp_path / "objects"
    store = FilesystemObjectStore(objects, SystemClock())
    now = SystemClock().now()
    run = uuid.uuid4().hex[:8]
    warm, poisoned, other, after = (f"p-{name}-{run}" for name in ("warm", "poison", "other", "after"))
    victim, bystander = f"i-victim-{run}", f"i-other-{run}"
    for point_id in (warm, other, after):
        await store.put(f"manifests/{point_id}", sample_manifest())
    await create_topics(kafka_bootstrap, [POINT_CREATED, VERSION_EXPIRED, dlq_topic(POINT_CREATED), ALERT_RAISED])
    env = dict(
        os.environ,
        STRONGROOM_KAFKA_BOOTSTRAP=kafka_bootstrap,
        STRONGROOM_OBJECT_STORE=f"file:{objects}",
        STRONGROOM_GRPC_LISTEN="127.0.0.1:0",
        PYTHONUNBUFFERED="1",
        **local_pki.env("catalog"),
        **pg_logins.env("catalog"),
    )
    token = await create_admin_token(pg_logins.owner, ["acct", "another-account"])
    process = await spawn("catalog", [sys.executable, "-m", "strongroom_catalog"], env, tmp_path, announce="catalog")
    try:
        async with (
            KafkaPublisher(kafka_bootstrap, idempotent=True) as publisher,
            local_pki.operator_channel(process.address, token) as channel,
        ):
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)  # type: ignore[misc]

            async def publish(event: events_pb2.PointCreated) -> None:
                await publisher.publish(POINT_CREATED, event.instance_id.encode(), event.SerializeToString())

            # The consumer is up and has its partition (group joins take a while on a busy machine).
            await publish(point_created(warm, f"v-{warm}", bystander, created_at=now))
            await _browsable(stub, warm, within=120)

            bad = point_created(poisoned, f"v-{poisoned}", victim, created_at=now, mount_point="/da\x00ta")
            good = point_created(other, f"v-{other}", bystander, created_at=now)
            good.account_id = "another-account"
            await publish(bad)
            await publish(good)
            delay = await _browsable(stub, other, within=60)
            print(f"\nthe good point behind the poisonous one was browsable after {delay:.2f} s")
            assert delay < MAX_DELAY_SECONDS

            key, value, headers = await find_record(
                kafka_bootstrap, dlq_topic(POINT_CREATED), lambda k, v: k == victim.encode()
            )
            assert value == bad.SerializeToString()  # dead-lettered unchanged
            assert b"failed 5 times" in headers[DLQ_ERROR_HEADER]
            _, raw, _ = await find_record(
                kafka_bootstrap,
                ALERT_RAISED,
                lambda k, v: events_pb2.AlertRaised.FromString(v).record_key == victim.encode(),
            )
            alert = events_pb2.AlertRaised.FromString(raw)
            assert alert.kind == events_pb2.ALERT_KIND_POISON_RECORD
            assert (alert.source, alert.topic, alert.dead_letter_topic) == (
                "catalog",
                POINT_CREATED,
                dlq_topic(POINT_CREATED),
            )
            assert alert.attempts == 5 and "\x00" not in alert.reason
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetPoint(catalog_pb2.GetPointRequest(point_id=poisoned))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND

            # The victim's next point is indexed in full (it is not a delta of the dead-lettered one).
            await publish(point_created(after, f"v-{after}", victim, created_at=now))
            await _browsable(stub, after, within=30)
            page = await stub.BrowsePoint(catalog_pb2.BrowsePointRequest(point_id=after, path="home"))
            assert [e.path for e in page.entries] == ["home/a.txt", "home/link"]
    finally:
        code = await process.stop()
    assert code == 0, process.log_path.read_text()[-3000:]
