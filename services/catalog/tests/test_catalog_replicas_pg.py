"""Two catalog replicas run retention at the same moment (ADR 0050, update of session 4): on the real
PostgreSQL function every due version expires once, by one of them, with one ``version-expired``
event, and the newest version of each instance is kept."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from catalog_fixtures import catalog_pool, point, row
from strongroom.events.v1 import events_pb2
from strongroom_catalog.repository import PgCatalogStore
from strongroom_catalog.retention import BATCH, expire_versions
from strongroom_platform.events import VERSION_EXPIRED
from strongroom_testing.fixtures import PgLogins

pytestmark = pytest.mark.integration

INSTANCES = 5
VERSIONS = 50  # per instance: 250 due in all, more than two batches of BATCH


async def test_two_replicas_expire_each_version_once(pg_logins: PgLogins) -> None:
    assert INSTANCES * (VERSIONS - 1) > 2 * BATCH
    pools = [await catalog_pool(pg_logins), await catalog_pool(pg_logins)]
    try:
        first, second = (PgCatalogStore(pool) for pool in pools)
        old = await pools[0].fetchval("SELECT trusted.now()") - dt.timedelta(days=40)
        async with first.transaction() as tx:
            for i in range(INSTANCES):
                for v in range(VERSIONS):
                    point_id = f"p-{i}-{v:03d}"
                    created = old + dt.timedelta(minutes=v, seconds=i)
                    await tx.upsert_point(point(point_id, f"v-{i}-{v:03d}", f"i-{i}", created_at=created))
                    await tx.add_entries([row(point_id, "etc/hosts")])
        runs = await asyncio.gather(*(expire_versions(repo) for repo in (first, second) * 2))
        expired = [version for run in runs for version in run]
        due = {f"v-{i}-{v:03d}" for i in range(INSTANCES) for v in range(VERSIONS - 1)}  # the newest is kept
        assert len(expired) == len(due) and set(expired) == due
        assert [await expire_versions(repo) for repo in (first, second)] == [[], []]
        rows = await pools[0].fetch("SELECT payload FROM outbox WHERE topic = $1", VERSION_EXPIRED)
        events = [events_pb2.VersionExpired.FromString(bytes(r["payload"])) for r in rows]
        assert sorted(e.version_id for e in events) == sorted(due)  # one event per version
        for i in range(INSTANCES):
            kept = await first.list_versions(f"i-{i}", accounts=None)
            assert [v.version_id for v in kept] == [f"v-{i}-{VERSIONS - 1:03d}"]
        assert await pools[0].fetchval("SELECT count(*) FROM entries") == INSTANCES
    finally:
        for pool in pools:
            await pool.close()
