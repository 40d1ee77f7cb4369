"""The audit record commits with the effect or not at all (ADR 0027), against a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from strongroom.events.v1 import events_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_platform import audit
from strongroom_platform.auth.principal import Role, operator, reset_current_call, set_current_call
from strongroom_platform.clock import utc
from strongroom_platform.db import (
    Migration,
    PgTransaction,
    create_pool,
    migrate,
    outbox_shard_migration,
    outbox_traceparent_migration,
    transaction,
)
from strongroom_platform.events import AUDIT_RECORDED, decode
from strongroom_platform.outbox import OUTBOX_DDL
from strongroom_platform.testing import FakeClock, InMemoryAuditSink, call_for

pytestmark = pytest.mark.integration

SCHEMA = "audittest"
PAUSE = "/strongroom.scheduler.v1.SchedulerService/PauseBackup"
EFFECTS = """
CREATE TABLE effects (id text PRIMARY KEY);
-- Lets a test make the audit insert fail inside the database, as a full disk or a bug would.
CREATE TABLE refuse_audit (refuse boolean NOT NULL);
CREATE FUNCTION refuse_audit_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.topic = 'audit-recorded' AND EXISTS (SELECT 1 FROM refuse_audit WHERE refuse) THEN
        RAISE EXCEPTION 'audit insert failed';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_audit BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_audit_rows();
"""


class EffectTx(PgTransaction):
    async def add(self, effect_id: str) -> None:
        await self._conn.execute("INSERT INTO effects (id) VALUES ($1)", effect_id)

    async def count(self) -> int:
        return int(await self._conn.fetchval("SELECT count(*) FROM effects"))


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(pg_dsn, SCHEMA, max_size=2)
    await migrate(
        pool,
        SCHEMA,
        [Migration(1, OUTBOX_DDL), Migration(2, EFFECTS), outbox_traceparent_migration(3), outbox_shard_migration(4)],
    )
    await pool.execute("DELETE FROM outbox; DELETE FROM effects; DELETE FROM refuse_audit")
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def mutating_call() -> Iterator[audit.CallAudit]:
    """What the interceptor sets up for an admitted PauseBackup of an operator of account acme."""
    sink = InMemoryAuditSink(FakeClock(utc(2026, 12, 1)), producer="scheduler")
    call = call_for(PAUSE, operator("token:abc", {"acme": Role.OPERATOR}))
    state, token = audit.begin(sink, PAUSE, "pause backups", scheduler_pb2.InstanceRef(instance_id="i-1"))
    state.call = call
    call_token = set_current_call(call)
    try:
        yield state
    finally:
        reset_current_call(call_token)
        audit.end(token)


async def audit_rows(pool: asyncpg.Pool) -> list[events_pb2.AuditRecorded]:
    rows = await pool.fetch("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id", AUDIT_RECORDED)
    return [decode(events_pb2.AuditRecorded, bytes(r["payload"])) for r in rows]


async def test_an_effect_commits_with_its_audit_record(pool: asyncpg.Pool, mutating_call: audit.CallAudit) -> None:
    audit.note_account("acme")
    async with transaction(pool, EffectTx) as tx:
        await tx.add("e1")
    [record] = await audit_rows(pool)
    assert (record.subject, list(record.account_ids), record.result_code) == ("token:abc", ["acme"], "OK")
    assert dict(record.resources) == {"instance_id": "i-1"}
    assert record.meta.producer == "scheduler"
    assert mutating_call.recorded == 1


async def test_a_failing_audit_insert_rolls_the_effect_back(pool: asyncpg.Pool, mutating_call: audit.CallAudit) -> None:
    await pool.execute("INSERT INTO refuse_audit VALUES (true)")
    with pytest.raises(asyncpg.RaiseError, match="audit insert failed"):
        async with transaction(pool, EffectTx) as tx:
            await tx.add("e1")
    assert await pool.fetchval("SELECT count(*) FROM effects") == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    assert mutating_call.recorded == 0


async def test_a_transaction_that_changed_nothing_records_nothing(
    pool: asyncpg.Pool, mutating_call: audit.CallAudit
) -> None:
    async with transaction(pool, EffectTx) as tx:
        assert await tx.count() == 0
    assert await audit_rows(pool) == []
    assert mutating_call.recorded == 0


async def test_outside_a_mutating_call_nothing_is_recorded(pool: asyncpg.Pool) -> None:
    async with transaction(pool, EffectTx) as tx:
        await tx.add("e1")
    assert await audit_rows(pool) == []


async def test_the_outbox_sink_records_in_its_own_transaction(pool: asyncpg.Pool) -> None:
    clock = FakeClock(utc(2026, 12, 1))
    sink = audit.OutboxAuditSink(pool, "restore", clock)
    state, token = audit.begin(sink, PAUSE, "pause backups", scheduler_pb2.InstanceRef(instance_id="i-1"))
    try:
        state.call = call_for(PAUSE, operator("token:abc", {"acme": Role.VIEWER}))
        await sink.record(state.event("PERMISSION_DENIED", "role viewer on account acme cannot pause backups"))
    finally:
        audit.end(token)
    [record] = await audit_rows(pool)
    assert record.result_code == "PERMISSION_DENIED" and list(record.account_ids) == ["acme"]
    assert record.meta.occurred_at.ToDatetime(tzinfo=dt.UTC) == clock.now()
