"""PostgreSQL adapter of ``BillingStore`` (schema ``billing``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from decimal import Decimal

import asyncpg
from strongroom_platform import db
from strongroom_platform.db import PgTransaction

from strongroom_billing.ledger import AccountDay, InstanceCharge, Plan, PlanBalance
from strongroom_billing.models import Usage

_ENSURE_INSTANCE = (
    "INSERT INTO instances (instance_id, account_id) VALUES ($1, $2) ON CONFLICT (instance_id) DO NOTHING"
)

# The latest unexpired version of each instance carries the instance's capacity.
_USAGE = """
WITH latest AS (
    SELECT DISTINCT ON (instance_id) instance_id, capacity_bytes
    FROM versions
    WHERE NOT expired
    ORDER BY instance_id, created_at DESC, version_id DESC
)
SELECT
    count(*) FILTER (WHERE latest.instance_id IS NOT NULL) AS backed_up,
    count(*) FILTER (WHERE latest.instance_id IS NULL AND (i.activated OR i.registered) AND NOT i.released)
        AS unbacked_up,
    -- the inventory's capacity wins over the agent's report (ADR 0040)
    coalesce(sum(coalesce(nullif(i.inventory_capacity_bytes, 0), latest.capacity_bytes))
             FILTER (WHERE latest.instance_id IS NOT NULL), 0)::bigint AS capacity_bytes
FROM instances i
LEFT JOIN latest ON latest.instance_id = i.instance_id
WHERE i.account_id = $1 AND NOT i.canceled AND ($2 = '' OR i.region = $2)
"""


# The facts as they stood at $1 (ADR 0036): expired or canceled before this ledger's migration = NULL = long gone.
_CHARGES_AT = """
SELECT DISTINCT ON (v.instance_id) i.account_id, v.instance_id, v.version_id,
       -- the inventory's capacity when the version was created (else its first one before the day's
       -- end) wins over the agent's report; 0 = no block devices known (ADR 0036, 0040)
       coalesce(nullif(coalesce(
           (SELECT h.capacity_bytes FROM inventory_capacities h
            WHERE h.instance_id = v.instance_id AND h.as_of <= v.created_at ORDER BY h.as_of DESC LIMIT 1),
           (SELECT h.capacity_bytes FROM inventory_capacities h
            WHERE h.instance_id = v.instance_id AND h.as_of < $1 ORDER BY h.as_of LIMIT 1)
       ), 0), v.capacity_bytes) AS capacity_bytes
FROM versions v
JOIN instances i ON i.instance_id = v.instance_id
WHERE v.created_at < $1
  AND (NOT v.expired OR v.expired_at >= $1)
  AND (NOT i.canceled OR i.canceled_at >= $1)
ORDER BY v.instance_id, v.created_at DESC, v.version_id DESC
"""

_PLAN_BALANCES = """
SELECT p.plan_id, p.account_id, p.ends_on, p.gib_days - coalesce(sum(d.gib_days), 0) AS remaining
FROM plans p
LEFT JOIN plan_draws d ON d.plan_id = p.plan_id
WHERE p.starts_on <= $1 AND p.ends_on >= $1
GROUP BY p.plan_id
HAVING p.gib_days - coalesce(sum(d.gib_days), 0) > 0
"""

_PLANS = """
SELECT p.*, coalesce(sum(d.gib_days), 0) AS used
FROM plans p
LEFT JOIN plan_draws d ON d.plan_id = p.plan_id
WHERE p.account_id = $1
  AND ($2::date IS NULL OR p.ends_on > $2 OR (p.ends_on = $2 AND p.plan_id COLLATE "C" > $3::text COLLATE "C"))
GROUP BY p.plan_id
ORDER BY p.ends_on, p.plan_id COLLATE "C"
LIMIT $4
"""


class PgBillingTx(PgTransaction):
    async def instance_activated(self, account_id: str, instance_id: str, region: str) -> None:
        await self._conn.execute(
            "INSERT INTO instances (instance_id, account_id, region, activated) VALUES ($1, $2, $3, true)"
            " ON CONFLICT (instance_id) DO UPDATE SET region = EXCLUDED.region, activated = true",
            instance_id,
            account_id,
            region,
        )

    async def instance_canceled(self, account_id: str, instance_id: str, at: dt.datetime) -> None:
        await self._conn.execute(
            "INSERT INTO instances (instance_id, account_id, canceled, canceled_at) VALUES ($1, $2, true, $3)"
            " ON CONFLICT (instance_id) DO UPDATE SET canceled = true,"
            " canceled_at = LEAST(instances.canceled_at, EXCLUDED.canceled_at)",
            instance_id,
            account_id,
            at,
        )

    async def instance_inventory(
        self,
        account_id: str,
        instance_id: str,
        region: str,
        *,
        released: bool,
        capacity_bytes: int,
        as_of: dt.datetime,
    ) -> bool:
        # history first: an older record arriving late is still what the inventory said then
        await self._conn.execute(
            "INSERT INTO inventory_capacities (instance_id, as_of, capacity_bytes) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            instance_id,
            as_of,
            capacity_bytes,
        )
        result = await self._conn.execute(
            "INSERT INTO instances (instance_id, account_id, region, registered, released, inventory_capacity_bytes,"
            " status_at) VALUES ($1, $2, $3, true, $4, $5, $6)"
            " ON CONFLICT (instance_id) DO UPDATE SET region = EXCLUDED.region, registered = true,"
            " released = EXCLUDED.released, inventory_capacity_bytes = EXCLUDED.inventory_capacity_bytes,"
            " status_at = EXCLUDED.status_at"
            " WHERE instances.status_at IS NULL OR instances.status_at <= EXCLUDED.status_at",
            instance_id,
            account_id,
            region,
            released,
            capacity_bytes,
            as_of,
        )
        return result == "INSERT 0 1"

    async def instance_reinstated(self, account_id: str, instance_id: str) -> None:
        await self._conn.execute(
            "UPDATE instances SET canceled = false, canceled_at = NULL WHERE instance_id = $1 AND account_id = $2",
            instance_id,
            account_id,
        )

    async def point_created(
        self, account_id: str, instance_id: str, version_id: str, created_at: dt.datetime, capacity_bytes: int
    ) -> None:
        await self._conn.execute(_ENSURE_INSTANCE, instance_id, account_id)
        await self._conn.execute(
            "INSERT INTO versions (version_id, instance_id, created_at, capacity_bytes) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (version_id) DO UPDATE"
            " SET capacity_bytes = GREATEST(versions.capacity_bytes, EXCLUDED.capacity_bytes),"
            # a tombstone written first (version-expired before point-created) holds the expiry time
            " created_at = LEAST(versions.created_at, EXCLUDED.created_at)",
            version_id,
            instance_id,
            created_at,
            capacity_bytes,
        )

    async def version_expired(self, account_id: str, instance_id: str, version_id: str, at: dt.datetime) -> None:
        await self._conn.execute(
            "INSERT INTO versions (version_id, instance_id, created_at, capacity_bytes, expired, expired_at)"
            " VALUES ($1, $2, $3, 0, true, $3) ON CONFLICT (version_id) DO UPDATE SET expired = true,"
            " expired_at = LEAST(versions.expired_at, EXCLUDED.expired_at)",
            version_id,
            instance_id,
            at,
        )

    async def usage(self, account_id: str, region: str) -> Usage:
        row = await self._conn.fetchrow(_USAGE, account_id, region)
        assert row is not None  # an aggregate always returns one row
        return Usage(
            backed_up=int(row["backed_up"]),
            unbacked_up=int(row["unbacked_up"]),
            capacity_bytes=int(row["capacity_bytes"]),
        )

    # -- the daily ledger --

    async def ledger_frontier(self) -> tuple[dt.date | None, dt.datetime | None]:
        last = await self.last_closed_day()
        earliest = await self._conn.fetchval("SELECT min(created_at) FROM versions WHERE capacity_bytes > 0")
        return last, earliest

    async def last_closed_day(self) -> dt.date | None:
        day: dt.date | None = await self._conn.fetchval("SELECT max(day) FROM ledger_closed_days")
        return day

    async def charges_at(self, end: dt.datetime) -> list[InstanceCharge]:
        rows = await self._conn.fetch(_CHARGES_AT, end)
        return [
            InstanceCharge(r["account_id"], r["instance_id"], r["version_id"], int(r["capacity_bytes"])) for r in rows
        ]

    async def plan_balances(self, day: dt.date) -> dict[str, list[PlanBalance]]:
        out: dict[str, list[PlanBalance]] = {}
        for r in await self._conn.fetch(_PLAN_BALANCES, day):
            out.setdefault(r["account_id"], []).append(PlanBalance(r["plan_id"], r["ends_on"], Decimal(r["remaining"])))
        return out

    async def close_day(
        self, day: dt.date, rows: Sequence[AccountDay], charges: Sequence[InstanceCharge], at: dt.datetime
    ) -> bool:
        closed = await self._conn.fetchval(
            "INSERT INTO ledger_closed_days (day, closed_at) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
            day,
            at,
        )
        if not closed:
            return False
        await self._conn.executemany(
            "INSERT INTO ledger_days (account_id, day, instances, capacity_bytes, billable_gib, price_per_gib_day,"
            " fee, plan_gib_days, charged) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [
                (
                    r.account_id,
                    day,
                    r.instances,
                    r.capacity_bytes,
                    r.billable_gib,
                    r.price_per_gib_day,
                    r.fee,
                    r.plan_gib_days,
                    r.charged,
                )
                for r in rows
            ],
        )
        await self._conn.executemany(
            "INSERT INTO ledger_instances (account_id, day, instance_id, version_id, capacity_bytes)"
            " VALUES ($1, $2, $3, $4, $5)",
            [(c.account_id, day, c.instance_id, c.version_id, c.capacity_bytes) for c in charges],
        )
        await self._conn.executemany(
            "INSERT INTO plan_draws (plan_id, day, gib_days) VALUES ($1, $2, $3)",
            [(d.plan_id, day, d.gib_days) for r in rows for d in r.draws],
        )
        return True

    async def ledger(self, account_id: str, first: dt.date, last: dt.date) -> list[AccountDay]:
        rows = await self._conn.fetch(
            "SELECT * FROM ledger_days WHERE account_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day",
            account_id,
            first,
            last,
        )
        return [
            AccountDay(
                account_id=r["account_id"],
                day=r["day"],
                instances=r["instances"],
                capacity_bytes=int(r["capacity_bytes"]),
                billable_gib=r["billable_gib"],
                price_per_gib_day=r["price_per_gib_day"].normalize(),
                fee=r["fee"],
                plan_gib_days=r["plan_gib_days"],
                charged=r["charged"],
                draws=(),
            )
            for r in rows
        ]

    async def ledger_instances(
        self,
        account_id: str,
        first: dt.date,
        last: dt.date,
        *,
        after: tuple[dt.date, str] | None = None,
        limit: int | None = None,
    ) -> list[tuple[dt.date, InstanceCharge]]:
        after_day, after_id = after if after is not None else (None, "")
        # the primary key's order (account_id, day, instance_id): the keyset reads it in place
        rows = await self._conn.fetch(
            "SELECT * FROM ledger_instances WHERE account_id = $1 AND day BETWEEN $2 AND $3"
            " AND ($4::date IS NULL OR (day, instance_id) > ($4, $5)) ORDER BY day, instance_id LIMIT $6",
            account_id,
            first,
            last,
            after_day,
            after_id,
            limit,
        )
        return [
            (r["day"], InstanceCharge(r["account_id"], r["instance_id"], r["version_id"], int(r["capacity_bytes"])))
            for r in rows
        ]

    async def add_plan(self, plan: Plan) -> None:
        await self._conn.execute(
            "INSERT INTO plans (plan_id, account_id, gib_days, starts_on, ends_on, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            plan.plan_id,
            plan.account_id,
            plan.gib_days,
            plan.starts_on,
            plan.ends_on,
            plan.created_at,
        )

    async def plans(
        self, account_id: str, *, after: tuple[dt.date, str] | None = None, limit: int | None = None
    ) -> list[Plan]:
        after_day, after_id = after if after is not None else (None, "")
        return [
            Plan(
                plan_id=r["plan_id"],
                account_id=r["account_id"],
                gib_days=r["gib_days"],
                starts_on=r["starts_on"],
                ends_on=r["ends_on"],
                created_at=r["created_at"],
                used_gib_days=Decimal(r["used"]),
            )
            for r in await self._conn.fetch(_PLANS, account_id, after_day, after_id, limit)
        ]


class PgBillingStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def transaction(self) -> AbstractAsyncContextManager[PgBillingTx]:
        return db.transaction(self._pool, PgBillingTx)
