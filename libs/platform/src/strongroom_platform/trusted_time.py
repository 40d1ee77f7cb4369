"""Trusted time: PostgreSQL's ``now()`` plus an offset that only the migration owner can write (ADR 0031).

Rules that decide what is kept (a version's 30 days) read ``trusted.now()`` in the database, never
a service's, an agent's or a client's clock. The offset (schema ``trusted``, one row) is zero
everywhere except in ``strongroom standalone --clock-offset-days N``, which runs the platform at a
shifted clock on the filesystem object store. Every service role may read it; none may write it.
A service refuses to start when the offset is not zero and its object store is not the filesystem
one (:func:`check_offset_allowed`), so an offset set behind the platform's back stops it instead
of expiring backups early.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from strongroom_platform.clock import Clock
from strongroom_platform.db import Migration
from strongroom_platform.pg_roles import SERVICE_ROLES, LoginRefused, SchemaSpec

TRUSTED_SCHEMA = "trusted"

_V1 = """
CREATE TABLE trusted.clock_offset (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    offset_seconds bigint NOT NULL CHECK (offset_seconds >= 0),
    set_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO trusted.clock_offset (singleton, offset_seconds) VALUES (true, 0);
CREATE FUNCTION trusted.now() RETURNS timestamptz
    LANGUAGE sql STABLE SET search_path = pg_catalog
    AS $$ SELECT pg_catalog.now() + make_interval(secs => offset_seconds) FROM trusted.clock_offset $$;
"""

TRUSTED_SPEC = SchemaSpec(
    schema=TRUSTED_SCHEMA,
    migrations=[Migration(1, _V1)],
    grants={role: {"clock_offset": "SELECT"} for role in SERVICE_ROLES.values()},
    executes={role: ("now()",) for role in SERVICE_ROLES.values()},
)


async def trusted_now(conn: asyncpg.Connection) -> dt.datetime:
    """The trusted time, as the database says."""
    value: dt.datetime = await conn.fetchval("SELECT trusted.now()")
    return value


async def clock_offset(conn: asyncpg.Connection) -> dt.timedelta:
    """The configured offset (zero unless standalone mode set one)."""
    seconds = await conn.fetchval("SELECT offset_seconds FROM trusted.clock_offset")
    return dt.timedelta(seconds=int(seconds or 0))


async def set_clock_offset(conn: asyncpg.Connection, offset: dt.timedelta) -> None:
    """As the migration owner: set the offset (standalone mode only; whole seconds, not negative)."""
    seconds = int(offset.total_seconds())
    if seconds < 0:
        raise ValueError("the trusted clock offset cannot be negative")
    await conn.execute("UPDATE trusted.clock_offset SET offset_seconds = $1, set_at = now()", seconds)


class ShiftedClock:
    """``base`` moved ``offset`` ahead: the trusted time as a :class:`Clock`, for loops that decide by
    the trusted time in Python (billing's closed days) and read the offset once per pass."""

    def __init__(self, base: Clock, offset: dt.timedelta) -> None:
        self._base = base
        self._offset = offset

    def now(self) -> dt.datetime:
        return self._base.now() + self._offset

    async def sleep(self, seconds: float) -> None:
        await self._base.sleep(seconds)


async def trusted_clock(pool: asyncpg.Pool, base: Clock) -> ShiftedClock:
    """``base`` shifted by the trusted offset as the database holds it now (zero outside standalone mode)."""
    seconds = await pool.fetchval("SELECT offset_seconds FROM trusted.clock_offset")
    return ShiftedClock(base, dt.timedelta(seconds=int(seconds or 0)))


def check_offset_allowed(offset: dt.timedelta, object_store: str) -> None:
    """Refuse a non-zero offset unless the object store is the filesystem one (standalone mode)."""
    if offset and not object_store.startswith("file:"):
        raise LoginRefused(
            f"the trusted clock runs {offset} ahead (trusted.clock_offset), which only standalone mode with "
            "the filesystem object store may do; with S3 it would expire backups early. Reset it to 0 as the "
            "migration owner: UPDATE trusted.clock_offset SET offset_seconds = 0"
        )
