"""The PostgreSQL adapter passes the repository contract (real server, as the catalog's own role)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest
from catalog_fixtures import catalog_pool
from contract_lifecycle import LifecycleContract
from contract_repository import CatalogRepositoryContract
from contract_search import SearchContract
from contract_search import call as contract_call
from contract_search import index as contract_index
from contract_tree import TreeContract
from strongroom_catalog import search
from strongroom_catalog.migrations import SPEC
from strongroom_catalog.repository import PgCatalogStore
from strongroom_platform.pg_roles import migrate_schemas
from strongroom_platform.schemas import with_platform
from strongroom_testing.fixtures import PgLogins

pytestmark = pytest.mark.integration


class PgHarness:
    def __init__(self, pool: asyncpg.Pool, logins: PgLogins) -> None:
        self.pool = pool
        self.logins = logins
        self.repo = PgCatalogStore(pool)

    async def outbox(self) -> list[tuple[str, str, bytes]]:
        rows = await self.pool.fetch("SELECT topic, key, payload FROM outbox ORDER BY id")
        return [(r["topic"], bytes(r["key"]).decode(), bytes(r["payload"])) for r in rows]

    async def trusted_now(self) -> dt.datetime:
        value: dt.datetime = await self.pool.fetchval("SELECT trusted.now()")
        return value

    async def keep_latest(self, instance_id: str) -> bool:
        value = await self.pool.fetchval(
            "SELECT keep_latest FROM keep_latest_settings WHERE instance_id = $1 ORDER BY seq DESC LIMIT 1",
            instance_id,
        )
        return True if value is None else bool(value)

    async def index_rows(self) -> tuple[int, int]:
        """How many browse and search rows the store holds."""
        tree = await self.pool.fetchval("SELECT count(*) FROM tree_changes")
        found = await self.pool.fetchval("SELECT count(*) FROM search_changes")
        return int(tree), int(found)

    async def tree_rows(self) -> list[tuple[int, str, int]]:
        """(seq, path, type) of every browse row (ADR 0049)."""
        rows = await self.pool.fetch("SELECT seq, ltrim(parent || '/' || name, '/') AS path, type FROM tree_changes")
        return [(r["seq"], r["path"], r["type"]) for r in rows]


class TestPgCatalogRepository(CatalogRepositoryContract, LifecycleContract, SearchContract, TreeContract):
    @pytest.fixture
    async def harness(self, pg_logins: PgLogins) -> AsyncIterator[PgHarness]:  # type: ignore[override]
        pool = await catalog_pool(pg_logins)
        try:
            yield PgHarness(pool, pg_logins)
        finally:
            await pool.close()

    async def test_migrations_are_idempotent(self, harness: PgHarness) -> None:
        assert await migrate_schemas(harness.logins.owner, with_platform(SPEC)) == {
            "trusted": 0,
            "auth": 0,
            "catalog": 0,
        }


async def _all_hits(repo: PgCatalogStore, pattern: str, **kwargs: object) -> list[tuple[str, str]]:
    """Every hit of ``pattern``, page by page (pages of 3)."""
    seen: list[tuple[str, str]] = []
    token = ""
    while True:
        page = await search.search_files(
            repo,
            pattern,
            call=contract_call("ListFiles"),
            page_size=3,
            page_token=token,
            **kwargs,  # type: ignore[arg-type]
        )
        seen.extend((h.instance_id, h.path) for h in page.hits)
        token = page.next_page_token
        if not token:
            return seen


async def test_globs_find_the_same_through_the_names_as_through_the_rows(pg_logins: PgLogins) -> None:
    """ADR 0057: a glob without a literal prefix probes search_names first; with the probe off
    (rows only, as before), or overflowing it (a broad glob), the hits are the same, page by page."""
    pool = await catalog_pool(pg_logins)
    try:
        harness = PgHarness(pool, pg_logins)
        await contract_index(harness, 1, {f"var/log/app-{n:02d}.log": n for n in range(7)} | {"etc/app.conf": 1})
        await contract_index(harness, 1, {f"log/x-{n}.log": n for n in range(4)} | {"etc/APP.conf": 2}, instance="i-2")
        names = {r["name"] for r in await pool.fetch("SELECT name FROM search_names")}
        assert {"app-00.log", "x-3.log", "app.conf", "APP.conf", "var", "log"} <= names
        routes = {
            "names": PgCatalogStore(pool),
            "rows": PgCatalogStore(pool, name_probe_limit=0),
            "overflow": PgCatalogStore(pool, name_probe_limit=2),
        }
        for pattern, kwargs in (
            ("*.log", {}),
            ("*-0?.log", {}),
            ("*pp*", {}),
            ("*APP.*", {"ignore_case": True}),
            ("*.conf", {"instance_id": "i-2"}),
        ):
            found = {name: await _all_hits(repo, pattern, **kwargs) for name, repo in routes.items()}
            assert found["names"] == found["rows"] == found["overflow"], (pattern, found)
            assert found["names"], pattern
        assert len(await _all_hits(routes["names"], "*.log")) == 11
    finally:
        await pool.close()
