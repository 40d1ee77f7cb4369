"""The whole catalog process in-process: real PostgreSQL, in-memory bus and object store, FakeClock."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from catalog_fixtures import eventually, point_created, sample_manifest, settings_changed
from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from strongroom.events.v1 import events_pb2
from strongroom_catalog.bootstrap import run
from strongroom_catalog.settings import Settings
from strongroom_platform.admin import create_admin_token
from strongroom_platform.clock import utc
from strongroom_platform.events import INSTANCE_SETTINGS_CHANGED, POINT_CREATED, VERSION_EXPIRED
from strongroom_platform.settings import PlatformSettings
from strongroom_platform.testing import FakeClock, InMemoryEventBus, InMemoryObjectStore
from strongroom_testing.fixtures import PgLogins
from strongroom_testing.pki import LocalPki

pytestmark = pytest.mark.integration

NOW = utc(2026, 6, 1)
HOUR = 3600


def settings(logins: PgLogins, pki: LocalPki) -> Settings:
    platform = PlatformSettings(
        pg_dsn=logins.service("catalog"),
        pg_migrate_dsn=logins.owner,
        kafka_bootstrap="unused:9092",
        kafka_idempotent=False,
        object_store="file:unused",
        s3=None,
        otel="none",
        tls=pki.tls("catalog"),
    )
    return Settings(platform=platform, grpc_listen="127.0.0.1:0", retention_interval=HOUR)


@contextlib.asynccontextmanager
async def running_catalog(
    logins: PgLogins,
    capsys: pytest.CaptureFixture[str],
    bus: InMemoryEventBus,
    clock: FakeClock,
    store: InMemoryObjectStore,
) -> AsyncIterator[catalog_pb2_grpc.CatalogServiceAsyncStub]:
    pki = LocalPki.create(Path(tempfile.mkdtemp(prefix="catalog-pki-")))
    # the token's expiry is checked against the test's clock
    token = await create_admin_token(logins.owner, "acct", clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run(settings(logins, pki), stop, clock=clock, object_store=store, publisher=bus, consumer_factory=bus.consumer)
    )
    output: list[str] = []

    def listening() -> bool:
        output.extend(capsys.readouterr().out.splitlines())
        assert not task.done(), task
        return any(line.startswith("LISTENING catalog ") for line in output)

    await eventually(listening, within=30)
    [line] = [line for line in output if line.startswith("LISTENING catalog ")]
    host_port = line.removeprefix("LISTENING catalog ")
    assert host_port.startswith("127.0.0.1:") and int(host_port.rsplit(":", 1)[1]) > 0
    try:
        async with pki.operator_channel(host_port, token) as channel:
            yield catalog_pb2_grpc.CatalogServiceStub(channel)  # type: ignore[misc]
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        shutil.rmtree(pki.directory, ignore_errors=True)


async def test_points_are_indexed_browsed_and_expired(pg_logins: PgLogins, capsys: pytest.CaptureFixture[str]) -> None:
    bus = InMemoryEventBus()
    clock = FakeClock(NOW)
    store = InMemoryObjectStore()
    for point_id in ("p-old", "p-new"):
        await store.put(f"manifests/{point_id}", sample_manifest())
    async with running_catalog(pg_logins, capsys, bus, clock, store) as stub:
        for point_id, version_id, age in (("p-old", "v-old", 40), ("p-new", "v-new", 35)):
            event = point_created(point_id, version_id, created_at=NOW - dt.timedelta(days=age))
            await bus.publish(POINT_CREATED, b"i-1", event.SerializeToString())

        async def browsable() -> list[tuple[str, bool]]:
            response = await stub.ListVersions(catalog_pb2.ListVersionsRequest(instance_id="i-1"))
            return [(p.point_id, p.browsable) for v in response.versions for p in v.points]

        for _ in range(1000):  # until the newest point is indexed (v-old may expire at any time now)
            if ("p-new", True) in await browsable():
                break
            await asyncio.sleep(0.01)
        page = await stub.BrowsePoint(catalog_pb2.BrowsePointRequest(point_id="p-new", path="etc"))
        assert [e.path for e in page.entries] == ["etc/hosts", "etc/nginx"]

        # Next retention run: v-old is past 30 days, v-new is kept as the newest. The clock moves
        # on at every poll: an advance that lands before the retention loop went back to sleep
        # would otherwise only push its wake-up time further away (a slow first run under load).
        for _ in range(600):
            if bus.topics.get(VERSION_EXPIRED):
                break
            clock.advance(HOUR)
            await asyncio.sleep(0.05)
        assert len(bus.topics.get(VERSION_EXPIRED, [])) == 1
        [(key, value)] = bus.topics[VERSION_EXPIRED]
        expired = events_pb2.VersionExpired.FromString(value)
        assert (key, expired.version_id, list(expired.point_ids)) == (b"i-1", "v-old", ["p-old"])
        assert await browsable() == [("p-new", True)]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.BrowsePoint(catalog_pb2.BrowsePointRequest(point_id="p-old"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_keep_latest_turned_off_expires_the_newest_version(
    pg_logins: PgLogins, capsys: pytest.CaptureFixture[str]
) -> None:
    bus = InMemoryEventBus()
    clock = FakeClock(NOW)
    store = InMemoryObjectStore()
    await store.put("manifests/p-only", sample_manifest())
    async with running_catalog(pg_logins, capsys, bus, clock, store) as stub:
        event = point_created("p-only", "v-only", "i-paused", created_at=NOW - dt.timedelta(days=31))
        await bus.publish(POINT_CREATED, b"i-paused", event.SerializeToString())

        async def versions() -> list[str]:
            response = await stub.ListVersions(catalog_pb2.ListVersionsRequest(instance_id="i-paused"))
            return [v.version_id for v in response.versions]

        for _ in range(1000):
            if await versions():
                break
            await asyncio.sleep(0.01)
        clock.advance(HOUR)  # a retention run: the only version is kept (keep-latest is on by default)
        await asyncio.sleep(0.1)
        assert await versions() == ["v-only"]

        off = settings_changed("i-paused", keep_latest=False, at=clock.now())
        await bus.publish(INSTANCE_SETTINGS_CHANGED, b"i-paused", off.SerializeToString())
        await eventually(lambda: bus.committed("catalog", INSTANCE_SETTINGS_CHANGED) == 1, within=30)
        for _ in range(300):  # the next retention run, at most an hour away, honours the setting
            if bus.topics.get(VERSION_EXPIRED):
                break
            clock.advance(HOUR)
            await asyncio.sleep(0.1)
        [(key, value)] = bus.topics[VERSION_EXPIRED]
        assert (key, events_pb2.VersionExpired.FromString(value).version_id) == (b"i-paused", "v-only")
        assert await versions() == []
