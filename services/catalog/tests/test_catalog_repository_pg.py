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
from contract_tree import TreeContract
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
