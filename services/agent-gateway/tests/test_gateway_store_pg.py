"""The PostgreSQL store passes the store contract, and the migrations apply (real server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from gateway_store_contract import GatewayStoreContract
from strongroom_gateway.migrations import MIGRATIONS, SCHEMA
from strongroom_gateway.repository import PgGatewayStore
from strongroom_platform.db import create_pool, migrate

pytestmark = pytest.mark.integration


class PgHarness:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.store = PgGatewayStore(pool)

    async def outbox(self) -> list[tuple[str, str]]:
        rows = await self.pool.fetch("SELECT topic, key FROM outbox ORDER BY id")
        return [(r["topic"], bytes(r["key"]).decode()) for r in rows]


class TestPgGatewayStore(GatewayStoreContract):
    @pytest.fixture
    async def harness(self, pg_dsn: str) -> AsyncIterator[PgHarness]:  # type: ignore[override]
        pool = await create_pool(pg_dsn, SCHEMA)
        try:
            assert await migrate(pool, SCHEMA, MIGRATIONS) == len(MIGRATIONS)
            assert await migrate(pool, SCHEMA, MIGRATIONS) == 0
            yield PgHarness(pool)
        finally:
            await pool.close()
