"""Two billing replicas close the ledger's days at the same moment (ADR 0050, update of session 4):
each day is closed once, by one of them, and a plan is drawn from once per day."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import pytest
from strongroom_billing import handlers
from strongroom_billing.migrations import SPEC
from strongroom_billing.repository import PgBillingStore
from strongroom_platform.testing import FakeClock
from strongroom_testing.fixtures import PgLogins
from test_billing_ledger import GIB, SETTINGS, at8, call, days, point

pytestmark = pytest.mark.integration


async def test_two_replicas_close_each_day_once_and_draw_each_plan_once(pg_logins: PgLogins) -> None:
    pools = [await pg_logins.pool(SPEC), await pg_logins.pool(SPEC)]
    try:
        first, second = (PgBillingStore(pool) for pool in pools)
        clock = FakeClock(at8(1, 0))
        await handlers.create_plan(first, clock, "acme", "250", "2026-12-01", "2026-12-31", call=call("CreatePlan"))
        for n in range(3):
            await point(first, f"i{n}", f"v{n}", 50 * GIB, at8(1, 3))  # 50 GiB billable a day (100 are free)
        await point(first, "j1", "w1", 80 * GIB, at8(1, 3), account="other")
        clock.set(at8(13, 2))  # the 1st to the 12th are due
        passes = await asyncio.gather(*(handlers.close_ledger_days(s, clock, SETTINGS) for s in (first, second) * 2))
        closed = [day for run in passes for day in run]
        assert sorted(closed) == [dt.date(2026, 12, d) for d in range(1, 13)]  # each day once, by one pass
        for store in (first, second):
            assert await handlers.close_ledger_days(store, clock, SETTINGS) == []
        rows = await days(second, "2026-12-01", "2026-12-12")
        # 250 GiB-days of plan cover the first 5 days exactly; a double draw would end it sooner.
        assert [(r.plan_gib_days, r.charged) for r in rows.values()] == [(Decimal(50), Decimal(0))] * 5 + [
            (Decimal(0), Decimal("0.0250"))
        ] * 7
        assert len(await days(second, "2026-12-01", "2026-12-12", account="other")) == 12
        async with pools[0].acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM ledger_closed_days") == 12
            assert await conn.fetchval("SELECT sum(gib_days) FROM plan_draws") == 250
            assert await conn.fetchval("SELECT count(*) FROM ledger_instances") == 12 * 4
    finally:
        for pool in pools:
            await pool.close()
