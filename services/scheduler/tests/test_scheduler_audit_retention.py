"""Retention of the audit trail (ADR 0057): records older than the configured time by the trusted
clock go, in batches; younger ones stay, and so does a record that arrived late with an old time;
nothing under 90 days can be pruned. On the fake (its trusted clock injected) and on PostgreSQL as
the scheduler's own role (the trusted offset moved like the clock)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import utc
from strongroom_platform.events import new_meta
from strongroom_platform.settings import SettingsError
from strongroom_platform.testing import FakeClock
from strongroom_platform.trusted_time import set_clock_offset
from strongroom_scheduler.audit_retention import AuditRetention, prune_audit, run_audit_prune_loop
from strongroom_scheduler.migrations import SPEC
from strongroom_scheduler.ports import AuditQuery, SchedulerStore
from strongroom_scheduler.repository import PgSchedulerStore
from strongroom_scheduler.settings import Settings
from strongroom_scheduler.testing import InMemorySchedulerStore
from strongroom_testing.fixtures import PgLogins
from test_scheduler_settings import BASE

KEEP = dt.timedelta(days=400)


class Trail:
    """A scheduler store whose trusted time moves with ``clock`` (``advance``)."""

    def __init__(self, store: SchedulerStore, clock: FakeClock, move_trusted: Callable[[], Awaitable[None]]) -> None:
        self.store = store
        self.clock = clock
        self._move_trusted = move_trusted

    async def advance(self, **delta: float) -> None:
        self.clock.advance(**delta)
        await self._move_trusted()

    async def record(self, name: str, *, occurred: dt.datetime | None = None) -> None:
        event = events_pb2.AuditRecorded(
            meta=new_meta("scheduler", occurred or self.clock.now()),
            subject=f"token:{name}",
            principal_kind="operator",
            account_ids=["acme"],
            method="/strongroom.scheduler.v1.SchedulerService/PauseBackup",
            verb="pause backups",
            result_code="OK",
        )
        async with self.store.transaction() as tx:
            await tx.insert_audit_event(event)

    async def subjects(self) -> set[str]:
        async with self.store.transaction() as tx:
            found = await tx.list_audit_events(AuditQuery(account_id="acme", limit=1000))
        return {e.subject.removeprefix("token:") for e in found}


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def trail(request: pytest.FixtureRequest) -> AsyncIterator[Trail]:
    if request.param == "memory":
        clock = FakeClock(utc(2026, 12, 6, 2, 0))
        yield Trail(InMemorySchedulerStore(trusted_clock=clock), clock, _nothing)
        return
    # PostgreSQL stores each record at its own now(): the fake clock starts at the real time, and
    # the trusted offset follows it.
    logins: PgLogins = request.getfixturevalue("pg_logins")
    start = dt.datetime.now(dt.UTC)
    clock = FakeClock(start)

    async def move_trusted() -> None:
        conn = await asyncpg.connect(logins.owner)
        try:
            await set_clock_offset(conn, clock.now() - start)
        finally:
            await conn.close()

    pool = await logins.pool(SPEC)
    try:
        yield Trail(PgSchedulerStore(pool), clock, move_trusted)
    finally:
        await move_trusted_back(logins)
        await pool.close()


async def _nothing() -> None:
    return None


async def move_trusted_back(logins: PgLogins) -> None:
    conn = await asyncpg.connect(logins.owner)
    try:
        await set_clock_offset(conn, dt.timedelta(0))
    finally:
        await conn.close()


async def test_records_older_than_the_retention_go_in_batches(trail: Trail) -> None:
    for n in range(5):
        await trail.record(f"old-{n}")
    await trail.advance(days=200)
    await trail.record("middle")
    # Arrives now but claims an old time: kept until it is old by the trusted clock too.
    await trail.record("late", occurred=trail.clock.now() - dt.timedelta(days=300))
    await trail.advance(days=199)
    assert await prune_audit(trail.store, AuditRetention(keep=KEEP, batch=2)) == 0  # 399 days: all stay

    await trail.advance(days=2)
    assert await prune_audit(trail.store, AuditRetention(keep=KEEP, batch=2)) == 5  # three transactions
    assert await trail.subjects() == {"middle", "late"}
    assert await prune_audit(trail.store, AuditRetention(keep=KEEP, batch=2)) == 0
    await trail.advance(days=200)
    assert await prune_audit(trail.store, AuditRetention(keep=KEEP)) == 2
    assert await trail.subjects() == set()


async def test_nothing_under_ninety_days_is_pruned(trail: Trail) -> None:
    await trail.record("recent")
    await trail.advance(days=89)
    with pytest.raises((ValueError, asyncpg.InvalidParameterValueError)):
        async with trail.store.transaction() as tx:
            await tx.prune_audit_events(dt.timedelta(days=30), 100)
    with pytest.raises(ValueError):
        AuditRetention(keep=dt.timedelta(days=89))
    assert await trail.subjects() == {"recent"}


@pytest.mark.integration
async def test_the_role_still_cannot_delete_and_the_trigger_guards_the_owner(pg_logins: PgLogins) -> None:
    pool = await pg_logins.pool(SPEC)
    try:
        trail = Trail(PgSchedulerStore(pool), FakeClock(dt.datetime.now(dt.UTC)), _nothing)
        await trail.record("kept", occurred=trail.clock.now() - dt.timedelta(days=1000))
    finally:
        await pool.close()
    scheduler = await asyncpg.connect(pg_logins.service("scheduler"))
    owner = await asyncpg.connect(pg_logins.owner)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await scheduler.execute("DELETE FROM scheduler.audit_events")
        # The owner may delete, but the trigger lets a row go only inside the function's window,
        # and a setting made by hand does not open it for a row stored now.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await owner.execute("DELETE FROM scheduler.audit_events")
        async with owner.transaction():
            await owner.execute("SELECT set_config('strongroom.audit_prune_before', '2000-01-01', true)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await owner.execute("DELETE FROM scheduler.audit_events")
        assert await scheduler.fetchval("SELECT scheduler.prune_audit_events(interval '400 days', 10)") == 0
        assert await scheduler.fetchval("SELECT count(*) FROM scheduler.audit_events") == 1
    finally:
        await scheduler.close()
        await owner.close()


async def test_the_loop_prunes_on_its_interval() -> None:
    clock = FakeClock(utc(2026, 12, 6, 2, 0))
    trail = Trail(InMemorySchedulerStore(trusted_clock=clock), clock, _nothing)
    await trail.record("old")
    task = asyncio.create_task(run_audit_prune_loop(trail.store, clock, AuditRetention(keep=KEEP, interval=3600)))
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        assert await trail.subjects() == {"old"}
        clock.advance(days=401)  # the loop wakes and prunes
        for _ in range(5):
            await asyncio.sleep(0)
        assert await trail.subjects() == set()
    finally:
        task.cancel()


def test_the_retention_is_a_setting() -> None:
    assert Settings.from_env(BASE).audit_retention.keep == KEEP
    ninety = Settings.from_env({**BASE, "STRONGROOM_AUDIT_KEEP_DAYS": "90"})
    assert ninety.audit_retention.keep == dt.timedelta(days=90)
    for bad in ("89", "0", "forever"):
        with pytest.raises(SettingsError):
            Settings.from_env({**BASE, "STRONGROOM_AUDIT_KEEP_DAYS": bad})
