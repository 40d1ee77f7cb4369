"""OutboxRelay and inbox.claim_event against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import SystemClock
from strongroom_platform.db import Migration, create_pool, migrate, outbox_traceparent_migration
from strongroom_platform.events import JOB_REQUESTED, POINT_CREATED, decode, new_meta
from strongroom_platform.inbox import INBOX_DDL, claim_event
from strongroom_platform.outbox import OUTBOX_DDL, OutboxRelay, enqueue
from strongroom_testing.contracts.eventbus import wait_for

pytestmark = pytest.mark.integration

SCHEMA = "outboxtest"


class RecordingPublisher:
    """Records what was published; raises once on the ``fail_at``-th call (1-based)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.published: list[tuple[str, bytes, bytes]] = []
        self.headers: list[list[tuple[str, bytes]]] = []
        self.calls = 0
        self.fail_at = fail_at

    async def publish(self, topic: str, key: bytes, value: bytes, *, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise ConnectionError("broker went away")
        self.published.append((topic, key, value))
        self.headers.append(list(headers))

    def job_ids(self) -> list[str]:
        return [decode(events_pb2.JobRequested, value).job_id for _, _, value in self.published]


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(pg_dsn, SCHEMA, max_size=4)
    await migrate(pool, SCHEMA, [Migration(1, OUTBOX_DDL), Migration(2, INBOX_DDL), outbox_traceparent_migration(3)])
    try:
        yield pool
    finally:
        await pool.close()


def job(job_id: str) -> events_pb2.JobRequested:
    return events_pb2.JobRequested(
        meta=new_meta("test", SystemClock().now()), account_id="acct", instance_id="i-1", job_id=job_id
    )


async def enqueue_jobs(pool: asyncpg.Pool, job_ids: list[str]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for job_id in job_ids:
            await enqueue(conn, JOB_REQUESTED, "i-1", job(job_id))


async def pending(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM outbox")
    return count


async def test_rolled_back_enqueue_publishes_nothing(pool: asyncpg.Pool) -> None:
    publisher = RecordingPublisher()
    with pytest.raises(RuntimeError, match="state change failed"):
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, JOB_REQUESTED, "i-1", job("j-rolled-back"))
            raise RuntimeError("state change failed")
    relay = OutboxRelay(pool, SCHEMA, publisher, SystemClock())
    assert await relay.publish_pending() == 0
    assert publisher.published == []
    assert await pending(pool) == 0


async def test_committed_events_are_published_once_in_order(pool: asyncpg.Pool) -> None:
    await enqueue_jobs(pool, ["j1", "j2", "j3"])
    await enqueue_jobs(pool, ["j4", "j5"])
    publisher = RecordingPublisher()
    relay = OutboxRelay(pool, SCHEMA, publisher, SystemClock())
    assert await relay.publish_pending() == 5
    assert await relay.publish_pending() == 0
    assert publisher.job_ids() == ["j1", "j2", "j3", "j4", "j5"]
    assert {(topic, key) for topic, key, _ in publisher.published} == {(JOB_REQUESTED, b"i-1")}
    assert await pending(pool) == 0


async def test_publisher_failing_midway_keeps_the_rest_for_later(pool: asyncpg.Pool) -> None:
    await enqueue_jobs(pool, ["j1", "j2", "j3", "j4", "j5"])
    publisher = RecordingPublisher(fail_at=3)
    relay = OutboxRelay(pool, SCHEMA, publisher, SystemClock())
    with pytest.raises(ConnectionError):
        await relay.publish_pending()
    assert publisher.job_ids() == ["j1", "j2"]
    assert await pending(pool) == 3  # the acknowledged rows are gone, the rest wait
    assert await relay.publish_pending() == 3
    assert publisher.job_ids() == ["j1", "j2", "j3", "j4", "j5"]
    assert await pending(pool) == 0


async def test_batches_keep_the_order(pool: asyncpg.Pool) -> None:
    ids = [f"j{i:02d}" for i in range(7)]
    await enqueue_jobs(pool, ids)
    publisher = RecordingPublisher()
    relay = OutboxRelay(pool, SCHEMA, publisher, SystemClock(), batch_size=3)
    assert [await relay.publish_pending() for _ in range(4)] == [3, 3, 1, 0]
    assert publisher.job_ids() == ids


async def test_kept_rows_are_replayed_in_order(pool: asyncpg.Pool) -> None:
    await enqueue_jobs(pool, ["j1", "j2"])
    publisher = RecordingPublisher()
    relay = OutboxRelay(pool, SCHEMA, publisher, SystemClock(), keep_published=True)
    assert await relay.publish_pending() == 2
    assert await relay.publish_pending() == 0
    assert await relay.replay_published() == 2
    assert await relay.publish_pending() == 2
    assert publisher.job_ids() == ["j1", "j2", "j1", "j2"]


async def test_running_relay_is_woken_by_notify(pool: asyncpg.Pool) -> None:
    publisher = RecordingPublisher()
    # A poll interval far beyond the test's patience: only NOTIFY can wake the relay in time.
    relay = OutboxRelay(pool, SCHEMA, publisher, SystemClock(), poll_interval=3600)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.3)  # let it subscribe and go to sleep
        await enqueue_jobs(pool, ["j-notified"])
        await wait_for(lambda: bool(publisher.published), "the relay to publish", within=10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert publisher.job_ids() == ["j-notified"]


async def test_enqueue_checks_topic_type_and_transaction(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the transaction"):
            await enqueue(conn, JOB_REQUESTED, "i-1", job("j"))
        async with conn.transaction():
            with pytest.raises(ValueError, match="not the message type"):
                await enqueue(conn, POINT_CREATED, "i-1", job("j"))
    assert await pending(pool) == 0


async def test_claim_event_succeeds_once_per_consumer(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        async with conn.transaction():
            assert await claim_event(conn, "catalog", "event-1") is True
        async with conn.transaction():
            assert await claim_event(conn, "catalog", "event-1") is False
            assert await claim_event(conn, "billing", "event-1") is True  # another consumer
        with pytest.raises(ValueError, match="event_id"):
            await claim_event(conn, "catalog", "")


async def test_claim_in_a_rolled_back_transaction_does_not_count(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                assert await claim_event(conn, "catalog", "event-2") is True
                raise RuntimeError("handler failed after the claim")
        async with conn.transaction():
            assert await claim_event(conn, "catalog", "event-2") is True
