"""The PostgreSQL adapter passes the repository contract (real server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from restore_contract_repository import RestoreRepositoryContract
from strongroom_platform.db import create_pool, migrate
from strongroom_restore.migrations import MIGRATIONS, SCHEMA
from strongroom_restore.repository import PgRestoreStore

pytestmark = pytest.mark.integration


class PgHarness:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.repo = PgRestoreStore(pool)

    async def outbox(self) -> list[tuple[str, str, bytes]]:
        rows = await self.pool.fetch("SELECT topic, key, payload FROM outbox ORDER BY id")
        return [(r["topic"], bytes(r["key"]).decode(), bytes(r["payload"])) for r in rows]


class TestPgRestoreRepository(RestoreRepositoryContract):
    @pytest.fixture
    async def harness(self, pg_dsn: str) -> AsyncIterator[PgHarness]:  # type: ignore[override]
        pool = await create_pool(pg_dsn, SCHEMA)  # pg_dsn is a fresh database per test
        await migrate(pool, SCHEMA, MIGRATIONS)
        try:
            yield PgHarness(pool)
        finally:
            await pool.close()

    async def test_migrations_are_idempotent(self, harness: PgHarness) -> None:
        assert await migrate(harness.pool, SCHEMA, MIGRATIONS) == 0
