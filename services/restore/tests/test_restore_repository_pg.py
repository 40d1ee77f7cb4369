"""The PostgreSQL adapter passes the repository contract (real server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from restore_contract_repository import RestoreRepositoryContract
from strongroom_platform.pg_roles import migrate_schemas
from strongroom_restore.migrations import SCHEMA, SPEC
from strongroom_restore.repository import PgRestoreStore
from strongroom_testing.fixtures import PgLogins

pytestmark = pytest.mark.integration


class PgHarness:
    def __init__(self, pool: asyncpg.Pool, logins: PgLogins) -> None:
        self.pool = pool
        self.logins = logins
        self.repo = PgRestoreStore(pool)

    async def outbox(self) -> list[tuple[str, str, bytes]]:
        rows = await self.pool.fetch("SELECT topic, key, payload FROM outbox ORDER BY id")
        return [(r["topic"], bytes(r["key"]).decode(), bytes(r["payload"])) for r in rows]


class TestPgRestoreRepository(RestoreRepositoryContract):
    @pytest.fixture
    async def harness(self, pg_logins: PgLogins) -> AsyncIterator[PgHarness]:  # type: ignore[override]
        pool = await pg_logins.pool(SPEC)  # a fresh database per test; the restore service's own role
        try:
            yield PgHarness(pool, pg_logins)
        finally:
            await pool.close()

    async def test_migrations_are_idempotent(self, harness: PgHarness) -> None:
        assert await migrate_schemas(harness.logins.owner, [SPEC]) == {SCHEMA: 0}
