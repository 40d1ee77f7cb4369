from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from strongroom_billing.migrations import MIGRATIONS, SCHEMA
from strongroom_billing.ports import BillingStore
from strongroom_billing.repository import PgBillingStore
from strongroom_billing.testing import InMemoryBillingStore
from strongroom_platform.db import create_pool, migrate


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BillingStore]:
    """Every behaviour test runs against the fake and the PostgreSQL repository alike."""
    if request.param == "memory":
        yield InMemoryBillingStore()
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    pool = await create_pool(dsn, SCHEMA)
    try:
        await migrate(pool, SCHEMA, MIGRATIONS)
        yield PgBillingStore(pool)
    finally:
        await pool.close()
