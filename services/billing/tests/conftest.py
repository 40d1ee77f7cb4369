from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from strongroom_billing.migrations import SPEC
from strongroom_billing.ports import BillingStore
from strongroom_billing.repository import PgBillingStore
from strongroom_billing.testing import InMemoryBillingStore
from strongroom_testing.fixtures import PgLogins


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BillingStore]:
    """Every behaviour test runs against the fake and the PostgreSQL repository alike."""
    if request.param == "memory":
        yield InMemoryBillingStore()
        return
    logins: PgLogins = request.getfixturevalue("pg_logins")
    pool = await logins.pool(SPEC)  # as the billing service's own role (ADR 0031)
    try:
        yield PgBillingStore(pool)
    finally:
        await pool.close()
