"""Indexing on real PostgreSQL: a large manifest in COPY batches, and a crash in the middle of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from catalog_fixtures import DIR, call, catalog_pool, file_entry, point_created
from strongroom_catalog import handlers
from strongroom_catalog.model import TreeChange
from strongroom_catalog.repository import PgCatalogStore, PgCatalogTx
from strongroom_platform.manifest import encode_manifest
from strongroom_platform.testing import InMemoryObjectStore
from strongroom_testing.fixtures import PgLogins

pytestmark = pytest.mark.integration

DIRS = 20
FILES_PER_DIR = 2500


@pytest.fixture
async def pool(pg_logins: PgLogins) -> AsyncIterator[asyncpg.Pool]:
    pool = await catalog_pool(pg_logins)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def store() -> InMemoryObjectStore:
    entries = []
    for d in range(DIRS):
        entries.append(file_entry(f"d{d:02d}", DIR))
        entries.extend(file_entry(f"d{d:02d}/f{f:05d}", size=f) for f in range(FILES_PER_DIR))
    store = InMemoryObjectStore()
    await store.put("manifests/p1", encode_manifest(entries))
    return store


async def test_large_manifest_is_indexed_in_batches(pool: asyncpg.Pool, store: InMemoryObjectStore) -> None:
    repo = PgCatalogStore(pool)
    await handlers.handle_point_created(point_created(), repo=repo, store=store, batch_size=7000)
    assert await pool.fetchval("SELECT count(*) FROM tree_changes WHERE seq = 1") == DIRS * (FILES_PER_DIR + 1)
    rows, token = await handlers.browse_point(repo, "p1", "d07", page_size=1000, call=call("BrowsePoint"))
    assert rows[0].path == "d07/f00000" and rows[-1].path == "d07/f00999" and token
    rows, _ = await handlers.browse_point(repo, "p1", "d07", page_size=1000, page_token=token, call=call("BrowsePoint"))
    assert rows[0].name == "f01000"


async def browsable(repo: PgCatalogStore) -> bool:
    point = await repo.get_point("p1")
    assert point is not None
    return point.browsable


async def test_crash_mid_index_rolls_back_and_redelivery_completes(
    pool: asyncpg.Pool, store: InMemoryObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    original = PgCatalogTx.add_tree_changes

    async def failing(self: PgCatalogTx, rows: Sequence[TreeChange]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionResetError("connection lost")
        await original(self, rows)

    repo = PgCatalogStore(pool)
    event = point_created()
    monkeypatch.setattr(PgCatalogTx, "add_tree_changes", failing)
    with pytest.raises(ConnectionResetError):
        await handlers.handle_point_created(event, repo=repo, store=store, batch_size=5000)
    assert await pool.fetchval("SELECT count(*) FROM tree_changes") == 0
    assert await pool.fetchval("SELECT count(*) FROM search_changes") == 0
    assert not await browsable(repo)

    await handlers.handle_point_created(event, repo=repo, store=store, batch_size=5000)
    assert await pool.fetchval("SELECT count(*) FROM tree_changes") == DIRS * (FILES_PER_DIR + 1)
    assert await browsable(repo)
    assert calls > 3
