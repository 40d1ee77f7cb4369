"""The PostgreSQL adapter passes the repository contract (real server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from catalog_fixtures import fresh_schema_pool
from contract_repository import CatalogRepositoryContract
from strongroom_catalog.migrations import MIGRATIONS
from strongroom_catalog.repository import PgCatalogStore
from strongroom_platform.db import migrate

pytestmark = pytest.mark.integration


class PgHarness:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.repo = PgCatalogStore(pool)

    async def outbox(self) -> list[tuple[str, str, bytes]]:
        rows = await self.pool.fetch("SELECT topic, key, payload FROM outbox ORDER BY id")
        return [(r["topic"], bytes(r["key"]).decode(), bytes(r["payload"])) for r in rows]


class TestPgCatalogRepository(CatalogRepositoryContract):
    @pytest.fixture
    async def harness(self, pg_dsn: str) -> AsyncIterator[PgHarness]:  # type: ignore[override]
        pool, schema = await fresh_schema_pool(pg_dsn)
        try:
            yield PgHarness(pool)
        finally:
            await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await pool.close()

    async def test_migrations_are_idempotent(self, harness: PgHarness) -> None:
        schema = await harness.pool.fetchval("SELECT current_schema()")
        assert await migrate(harness.pool, schema, MIGRATIONS) == 0
