"""The PostgreSQL store passes the store contract, and the migrations apply (real server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from gateway_store_contract import GatewayStoreContract
from strongroom_gateway.migrations import MIGRATIONS, SCHEMA, SPEC
from strongroom_gateway.repository import PgGatewayStore
from strongroom_platform.pg_roles import migrate_schemas
from strongroom_testing.fixtures import PgLogins

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
    async def harness(self, pg_logins: PgLogins) -> AsyncIterator[PgHarness]:  # type: ignore[override]
        assert await migrate_schemas(pg_logins.owner, [SPEC]) == {SCHEMA: len(MIGRATIONS)}
        pool = await pg_logins.pool(SPEC)  # as the gateway's own role (ADR 0031)
        try:
            assert await migrate_schemas(pg_logins.owner, [SPEC]) == {SCHEMA: 0}
            yield PgHarness(pool)
        finally:
            await pool.close()
