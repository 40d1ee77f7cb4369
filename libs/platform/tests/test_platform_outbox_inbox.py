"""OutboxRelay and inbox.claim_event against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import SystemClock
from strongroom_platform.db import (
    Migration,
    close_pool,
    create_pool,
    migrate,
    outbox_shard_migration,
    outbox_traceparent_migration,
)
from strongroom_platform.eventbus import OutgoingRecord
from strongroom_platform.events import JOB_REQUESTED, POINT_CREATED, decode, new_meta
from strongroom_platform.inbox import INBOX_DDL, claim_event
from strongroom_platform.outbox import OUTBOX_DDL, OutboxRelay, acknowledged, enqueue
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

    async def publish_batch(self, records: Sequence[OutgoingRecord]) -> list[BaseException | None]:
        """One record after the other; after a failure the rest fail too (as the idempotent producer
        refuses the records behind a failed one)."""
        outcomes: list[BaseException | None] = []
        failure: BaseException | None = None
        for record in records:
            if failure is None:
                try:
                    await self.publish(record.topic, record.key, record.value, headers=record.headers)
                except ConnectionError as exc:
                    failure = exc
            outcomes.append(failure)
        return outcomes

    def job_ids(self) -> list[str]:
        return [decode(events_pb2.JobRequested, value).job_id for _, _, value in self.published]


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(pg_dsn, SCHEMA, max_size=4)
    await migrate(
        pool,
        SCHEMA,
        [Migration(1, OUTBOX_DDL), Migration(2, INBOX_DDL), outbox_traceparent_migration(3), outbox_shard_migration(4)],
    )
    try:
        yield pool
    finally:
        await close_pool(pool)


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


class SlowSharedPublisher:
    """Appends (relay, key, job id) to a shared log; each batch takes a while, so relays overlap."""

    def __init__(self, name: str, log: list[tuple[str, bytes, str]]) -> None:
        self.name = name
        self.log = log

    async def publish(self, topic: str, key: bytes, value: bytes, *, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        raise AssertionError("the relay publishes in batches")

    async def publish_batch(self, records: Sequence[OutgoingRecord]) -> list[BaseException | None]:
        for record in records:
            self.log.append((self.name, record.key, decode(events_pb2.JobRequested, record.value).job_id))
        await asyncio.sleep(0.02)
        return [None] * len(records)


async def test_two_relays_share_the_outbox_and_keep_each_keys_order(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for i in range(1200):
            key = f"i-{i % 40}"
            await enqueue(conn, JOB_REQUESTED, key, job(f"{key}/{i // 40:04d}"))
    log: list[tuple[str, bytes, str]] = []
    relays = [OutboxRelay(pool, SCHEMA, SlowSharedPublisher(name, log), SystemClock(), batch_size=50) for name in "AB"]

    async def drain(relay: OutboxRelay) -> None:
        while await pending(pool):
            await relay.publish_pending()

    await asyncio.gather(*(drain(relay) for relay in relays))
    published = [job_id for _, _, job_id in log]
    assert sorted(published) == sorted(set(published)) and len(published) == 1200  # each exactly once
    by_key: dict[bytes, list[str]] = {}
    for _, key, job_id in log:
        by_key.setdefault(key, []).append(job_id)
    assert all(ids == sorted(ids) for ids in by_key.values())  # per key, in enqueue order
    assert {name for name, _, _ in log} == {"A", "B"}  # both relays did work


def test_a_failed_row_keeps_the_later_rows_of_its_key_pending() -> None:
    rows = [{"id": i, "topic": "t", "key": key} for i, key in enumerate([b"a", b"b", b"a", b"b", b"a"], start=1)]
    broken = ConnectionError("broker went away")
    done, failure = acknowledged(rows, [None, None, broken, None, None])  # type: ignore[arg-type]
    assert (done, failure) == ([1, 2, 4], broken)  # row 5 (key a) waits behind the failed row 3


async def test_relay_listens_again_after_its_connection_is_killed(pool: asyncpg.Pool) -> None:
    publisher = RecordingPublisher()
    # Only a NOTIFY (or the wake-up on listening again) can get the relay to publish in time.
    relay = OutboxRelay(pool, SCHEMA, publisher, SystemClock(), poll_interval=3600, listen_check_interval=0.2)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.3)
        async with pool.acquire() as conn:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                f" AND application_name = 'strongroom-{SCHEMA}'"  # this pool's only, not other tests' servers
            )
        assert killed >= 1
        await asyncio.sleep(1.5)  # the listener notices, waits its retry pause and listens again
        await enqueue_jobs(pool, ["j-after-outage"])
        await wait_for(lambda: bool(publisher.published), "the relay to publish after the outage", within=10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert publisher.job_ids() == ["j-after-outage"]
