"""PostgreSQL adapter of ``BillingStore`` (schema ``billing``)."""

from __future__ import annotations

import datetime as dt
from contextlib import AbstractAsyncContextManager

import asyncpg
from strongroom_platform import db
from strongroom_platform.db import PgTransaction

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
    count(*) FILTER (WHERE latest.instance_id IS NULL AND i.activated) AS unbacked_up,
    coalesce(sum(latest.capacity_bytes), 0)::bigint AS capacity_bytes
FROM instances i
LEFT JOIN latest ON latest.instance_id = i.instance_id
WHERE i.account_id = $1 AND NOT i.canceled AND ($2 = '' OR i.region = $2)
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

    async def instance_canceled(self, account_id: str, instance_id: str) -> None:
        await self._conn.execute(
            "INSERT INTO instances (instance_id, account_id, canceled) VALUES ($1, $2, true)"
            " ON CONFLICT (instance_id) DO UPDATE SET canceled = true",
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
            " SET capacity_bytes = GREATEST(versions.capacity_bytes, EXCLUDED.capacity_bytes)",
            version_id,
            instance_id,
            created_at,
            capacity_bytes,
        )

    async def version_expired(self, account_id: str, instance_id: str, version_id: str, at: dt.datetime) -> None:
        await self._conn.execute(
            "INSERT INTO versions (version_id, instance_id, created_at, capacity_bytes, expired)"
            " VALUES ($1, $2, $3, 0, true) ON CONFLICT (version_id) DO UPDATE SET expired = true",
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


class PgBillingStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def transaction(self) -> AbstractAsyncContextManager[PgBillingTx]:
        return db.transaction(self._pool, PgBillingTx)
