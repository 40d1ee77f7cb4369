"""Two catalog replicas run retention at the same moment (ADR 0050, update of session 4): on the real
PostgreSQL function every due version expires once, by one of them, with one ``version-expired``
event, and the newest version of each instance is kept; and both pruning the index of the same
lineages (ADR 0049) leave exactly each live point's rows."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from catalog_fixtures import DIR, call, catalog_pool, point, point_created, row
from contract_tree import PieceReader, browse_all, entry, expected
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_catalog import handlers, search
from strongroom_catalog.repository import PgCatalogStore
from strongroom_catalog.retention import BATCH, expire_versions, prune_lineages
from strongroom_platform.events import VERSION_EXPIRED
from strongroom_platform.manifest import encode_manifest
from strongroom_platform.testing import InMemoryObjectStore
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


# -- index pruning (ADR 0049) under two replicas ------------------------------------------------

LINEAGES = 3
FILES = 400  # per point: in the day after the baseline a quarter is deleted and a quarter changed


def _old_day() -> list[common_pb2.FileEntry]:
    return sorted(
        [entry("", DIR), entry("d", DIR), *(entry(f"d/f{n:03d}", size=n) for n in range(FILES))],
        key=lambda e: e.path.encode(),
    )


def _middle_day() -> list[common_pb2.FileEntry]:
    """A quarter of the files deleted (tombstones) and a quarter changed."""
    by_path = {e.path: e for e in _old_day()}
    for n in range(FILES):
        path = f"d/f{n:03d}"
        if n % 4 == 0:
            del by_path[path]
        elif n % 4 == 1:
            by_path[path] = entry(path, size=10_000 + n, mtime=2)
    return sorted(by_path.values(), key=lambda e: e.path.encode())


def _live_day() -> list[common_pb2.FileEntry]:
    """Another quarter changed; one deleted file back."""
    by_path = {e.path: e for e in _middle_day()}
    for n in range(2, FILES, 4):
        by_path[f"d/f{n:03d}"] = entry(f"d/f{n:03d}", size=20_000 + n, mtime=3)
    by_path["d/f004"] = entry("d/f004", size=4, mtime=3)
    return sorted(by_path.values(), key=lambda e: e.path.encode())


async def test_two_replicas_prune_each_lineage_to_its_live_point(pg_logins: PgLogins) -> None:
    """Both replicas prune the same lineages at once, in small batches: per lineage the browse and
    search rows left are exactly the live point's (no tombstone, no row of a deleted file), so the live
    point browses as its manifest says. The per-lineage lock (``prune_window``) is what makes this hold:
    without it one replica's batch finds the rows the other is deleting gone, counts nothing, and goes
    on to delete the tombstones while rows they hide are still there (deleted files come back)."""
    pools = [await catalog_pool(pg_logins), await catalog_pool(pg_logins)]
    try:
        first, second = (PgCatalogStore(pool) for pool in pools)
        reader = PieceReader(InMemoryObjectStore(), 1 << 20)
        now = await pools[0].fetchval("SELECT trusted.now()")
        days = ((_old_day(), 40), (_middle_day(), 35), (_live_day(), 1))
        for i in range(LINEAGES):
            for n, (entries, age) in enumerate(days):
                point_id = f"p-{i}-{n}"
                await reader.store.put(f"manifests/{point_id}", encode_manifest(entries))
                event = point_created(point_id, f"v-{point_id}", f"i-{i}", created_at=now - dt.timedelta(days=age))
                await handlers.handle_point_created(event, repo=first, store=reader, batch_size=100)
        assert len(await expire_versions(first)) == 2 * LINEAGES
        rows = "SELECT (SELECT count(*) FROM tree_changes) + (SELECT count(*) FROM search_changes)"
        before = await pools[0].fetchval(rows)

        runs = await asyncio.gather(*(prune_lineages(repo, batch=7) for repo in (first, second)))
        print(f"rows deleted by each replica: {runs}")
        assert sum(runs) == before - await pools[0].fetchval(rows)  # each row counted once
        assert [await prune_lineages(repo) for repo in (first, second)] == [0, 0]

        live = _live_day()
        for table in ("tree_changes", "search_changes"):
            assert await pools[0].fetchval(f"SELECT count(*) FROM {table} WHERE type = 0") == 0, table
            assert await pools[0].fetchval(f"SELECT count(*) FROM {table}") == LINEAGES * (len(live) - 1), table
        assert before > 2 * LINEAGES * (len(live) - 1)
        for i in range(LINEAGES):
            assert await browse_all(first, f"p-{i}-2") == expected(live)
            hit = await search.file_history(first, f"i-{i}", "/d/f001", call=call("GetFileHistory"))
            assert [(v.point_id, v.size) for v in hit.versions] == [(f"p-{i}-2", 10_001)]
    finally:
        for pool in pools:
            await pool.close()
