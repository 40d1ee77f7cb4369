"""Replication factor 3 on a real 3-broker KRaft cluster (issue 14, ADR 0061).

The registry's topics are created exactly as the production overlay's Strimzi ``KafkaTopic``s say
(``deploy/overlays/production/kafka-topics/topics.yaml``, rendered by ``make deploy-topics``): 12
partitions, 3 replicas, ``min.insync.replicas`` 2. Events enter a real outbox on PostgreSQL; the
platform's ``OutboxRelay`` publishes them with its ``KafkaPublisher`` (idempotent, ``acks=all``), and a
group of two ``FaustConsumer``s applies each one through the inbox. Then:

1. one broker is killed with SIGKILL mid-stream: the leaders of its partitions move to the other
   two, and every event is applied exactly once, none lost;
2. a second broker is killed: one replica is left in sync, fewer than ``min.insync.replicas``, and
   writes are refused (``NOT_ENOUGH_REPLICAS``): the relay's events stay in the outbox, none reaches
   a consumer, and none is deleted as published;
3. a killed broker comes back: the relay's waiting batch goes through and everything is applied
   exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, NotEnoughReplicasError
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import SystemClock
from strongroom_platform.db import Migration, create_pool, migrate, outbox_shard_migration, outbox_traceparent_migration
from strongroom_platform.eventbus import Record
from strongroom_platform.eventbus_kafka import FaustConsumer, KafkaPublisher, create_topics
from strongroom_platform.events import ALERT_RAISED, JOB_REQUESTED, TOPIC_SPECS, dead_letter_topic, decode, new_meta
from strongroom_platform.inbox import INBOX_DDL, claim_event
from strongroom_platform.outbox import OUTBOX_DDL, OutboxRelay, enqueue
from strongroom_servers.kafka_cluster import LocalKafkaCluster
from strongroom_testing.fixtures import start_or_skip

pytestmark = pytest.mark.integration

MANIFEST = Path(__file__).resolve().parents[2] / "deploy/overlays/production/kafka-topics/topics.yaml"
SCHEMA = "rf3test"
CONSUMER = "rf3-test.job-requested"
INSTANCES = 60
EFFECTS_DDL = """
CREATE TABLE effects (id bigserial PRIMARY KEY, event_id text NOT NULL, job_id text NOT NULL, member text NOT NULL);
CREATE TABLE deliveries (id bigserial PRIMARY KEY, event_id text NOT NULL);
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    with start_or_skip(LocalKafkaCluster(tmp_path_factory.mktemp("kafka-rf3"), brokers=3)) as started:
        yield started


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(pg_dsn, SCHEMA, max_size=8)
    migrations = [Migration(1, OUTBOX_DDL), Migration(2, INBOX_DDL), outbox_traceparent_migration(3)]
    await migrate(pool, SCHEMA, [*migrations, outbox_shard_migration(4), Migration(5, EFFECTS_DDL)])
    try:
        yield pool
    finally:
        await pool.close()


def production_topics() -> list[dict[str, Any]]:
    """The ``spec`` of every KafkaTopic the production overlay ships."""
    return [doc["spec"] for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc and doc["kind"] == "KafkaTopic"]


async def create_as_shipped(bootstrap: str, specs: list[dict[str, Any]]) -> None:
    """What Strimzi's topic operator does with the KafkaTopics: one CreateTopics per spec, as is."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
    await admin.start()
    try:
        topics = [
            NewTopic(
                spec["topicName"],
                spec["partitions"],
                spec["replicas"],
                topic_configs={name: str(value) for name, value in spec["config"].items()},
            )
            for spec in specs
        ]
        response = await admin.create_topics(topics, timeout_ms=60_000)
        assert [error[1] for error in response.topic_errors] == [0] * len(topics), response.topic_errors
    finally:
        await admin.close()


async def describe(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """The topic's partitions (``partition``, ``leader``, ``replicas``, ``isr``), by partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        [found] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert found["error_code"] == 0, found
    return sorted(found["partitions"], key=lambda p: p["partition"])


async def describe_all(bootstrap: str, topics: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every topic's partitions, by topic (none for a topic the broker does not know yet)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        found = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {topic["topic"]: topic["partitions"] if topic["error_code"] == 0 else [] for topic in found}


async def min_insync(bootstrap: str, topic: str) -> str | None:
    """The topic's ``min.insync.replicas`` as the answering broker sees it; None while it does not know the topic.

    DescribeConfigs goes to any broker, and one that has not applied the topic's creation from the
    metadata log yet answers with an error code and no entries.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [resource] = response.resources  # (error code, message, type, name, [entry (name, value, ...)])
    if resource[0] != 0:
        return None
    entries = next(field for field in resource if isinstance(field, list))
    return next((str(entry[1]) for entry in entries if entry[0] == "min.insync.replicas"), None)


async def until(what: str, check: Any, within: float) -> float:
    """Poll the async ``check()`` until true; the seconds it took (AssertionError after ``within``)."""
    started = time.monotonic()
    while not await _holds(check):
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within:.0f}s")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def _holds(check: Any) -> bool:
    try:
        return bool(await check())
    except KafkaError:  # a request to the killed broker, before the metadata says it is gone
        return False


class Stream:
    """Enqueues JobRequested events in the outbox, 20 every 0.1 s, keyed by 60 instances."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.event_ids: list[str] = []
        self._clock = SystemClock()

    async def enqueue(self, count: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for _ in range(count):
                n = len(self.event_ids)
                event = events_pb2.JobRequested(
                    meta=new_meta("rf3-test", self._clock.now()),
                    account_id="acct",
                    instance_id=f"i-{n % INSTANCES}",
                    job_id=f"job-{n}",
                )
                await enqueue(conn, JOB_REQUESTED, event.instance_id, event)
                self.event_ids.append(event.meta.event_id)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.enqueue(20)
            await asyncio.sleep(0.1)


def member(pool: asyncpg.Pool, name: str) -> Any:
    async def handle(record: Record) -> None:
        event = decode(events_pb2.JobRequested, record.value)
        async with pool.acquire() as conn:
            await conn.execute("INSERT INTO deliveries (event_id) VALUES ($1)", event.meta.event_id)
            async with conn.transaction():
                if await claim_event(conn, CONSUMER, event.meta.event_id):
                    await conn.execute(
                        "INSERT INTO effects (event_id, job_id, member) VALUES ($1, $2, $3)",
                        event.meta.event_id,
                        event.job_id,
                        name,
                    )

    return handle


async def count(pool: asyncpg.Pool, query: str) -> int:
    return int(await pool.fetchval(query))


async def refused_write(bootstrap: str) -> BaseException:
    """A plain ``acks=all`` write (no idempotence, so it gives up after its timeout): the broker's answer."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, request_timeout_ms=5_000
    )
    await producer.start()
    try:
        await producer.send_and_wait(JOB_REQUESTED, b"probe", key=b"i-probe")
    except Exception as exc:
        return exc
    finally:
        await producer.stop()
    raise AssertionError("a write with one replica in sync was acknowledged")


@pytest.mark.timeout(600)
async def test_rf3_survives_a_broker_and_refuses_writes_below_min_insync(
    cluster: LocalKafkaCluster, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    started = time.monotonic()
    bootstrap = cluster.bootstrap
    # The production overlay ships every registry topic and its dead-letter topic as 12 × RF 3 × ISR 2.
    specs = production_topics()
    registry = {*TOPIC_SPECS, *(dead_letter_topic(topic) for topic in TOPIC_SPECS)}
    assert {spec["topicName"] for spec in specs} == registry
    assert {(s["partitions"], s["replicas"], s["config"]["min.insync.replicas"]) for s in specs} == {(12, 3, 2)}
    # The services' own path (a consumer creates its missing topics from the registry) gives the same.
    by_service = [JOB_REQUESTED, dead_letter_topic(JOB_REQUESTED)]
    await create_topics(bootstrap, by_service)
    await create_as_shipped(bootstrap, [spec for spec in specs if spec["topicName"] not in by_service])
    layouts: dict[str, list[dict[str, Any]]] = {}

    async def created() -> bool:  # topic metadata reaches every broker a moment after CreateTopics
        layouts.update(await describe_all(bootstrap, sorted(registry)))
        return all(len(p) == 12 and all(len(x["isr"]) == 3 for x in p) for p in layouts.values())

    await until("every topic created with its replicas in sync", created, 60)
    assert set(layouts) == registry and all(len(partitions) == 12 for partitions in layouts.values())
    assert all(sorted(p["replicas"]) == sorted(p["isr"]) == [1, 2, 3] for ps in layouts.values() for p in ps)
    assert {p["leader"] for p in layouts[JOB_REQUESTED]} == {1, 2, 3}  # leadership spread over the brokers
    settings: dict[str, str | None] = {}

    async def configured() -> bool:  # each broker applies the topic configs from the metadata log on its own
        settings.update({topic: await min_insync(bootstrap, topic) for topic in (JOB_REQUESTED, ALERT_RAISED)})
        return None not in settings.values()

    await until("every topic's configs known", configured, 60)
    assert settings == {JOB_REQUESTED: "2", ALERT_RAISED: "2"}

    caplog.set_level(logging.WARNING, logger="aiokafka.producer.sender")
    stream = Stream(pool)
    publisher = KafkaPublisher(bootstrap, idempotent=True)
    await publisher.start()
    relay = OutboxRelay(pool, SCHEMA, publisher, SystemClock(), poll_interval=0.2)
    relaying = asyncio.create_task(relay.run())
    group = f"rf3-{uuid.uuid4().hex[:8]}"
    consumers = [
        FaustConsumer(bootstrap, group, {JOB_REQUESTED: member(pool, name)}, session_timeout=6.0, commit_interval=0.5)
        for name in ("A", "B")
    ]
    stop = asyncio.Event()
    streaming: asyncio.Task[None] | None = None
    try:
        for consumer in consumers:
            await consumer.start()
        streaming = asyncio.create_task(stream.run(stop))
        await until("300 effects", lambda: _at_least(pool, "SELECT count(*) FROM effects", 300), 120)

        # 1. SIGKILL the broker leading the most partitions, mid-stream.
        before = await describe(bootstrap, JOB_REQUESTED)
        leaders = [p["leader"] for p in before]
        victim = max(set(leaders), key=leaders.count)
        moved = [p["partition"] for p in before if p["leader"] == victim]
        cluster.kill(victim - 1)
        survivors = [b for b in (1, 2, 3) if b != victim]
        alive = ",".join(f"127.0.0.1:{cluster.brokers[b - 1].port}" for b in survivors)

        async def leaders_moved() -> bool:
            now = await describe(alive, JOB_REQUESTED)
            return all(p["leader"] in survivors and victim not in p["isr"] for p in now)

        failover = await until("leaders moved off the killed broker", leaders_moved, 60)
        await asyncio.sleep(2.0)  # the stream goes on across the new leaders
        stop.set()
        await streaming
        first = len(stream.event_ids)
        drain = await until(
            "every event of the stream applied", lambda: _at_least(pool, "SELECT count(*) FROM effects", first), 120
        )
        assert await count(pool, "SELECT count(*) FROM outbox") == 0

        # 2. A second broker down: one replica in sync, below min.insync.replicas 2.
        second = survivors[0]
        last = survivors[1]
        cluster.kill(second - 1)
        only = f"127.0.0.1:{cluster.brokers[last - 1].port}"

        async def one_in_sync() -> bool:
            return all(p["leader"] == last and p["isr"] == [last] for p in await describe(only, JOB_REQUESTED))

        await until("the ISR shrank to the last broker", one_in_sync, 60)
        # Right after the ISR shrank a client may still meet a stale leader (NOT_LEADER_OR_FOLLOWER);
        # the answer that counts is the broker's once settled. Never an acknowledgement.
        refusals = [await refused_write(only)]
        while not isinstance(refusals[-1], NotEnoughReplicasError) and len(refusals) < 3:
            refusals.append(await refused_write(only))
        assert isinstance(refusals[-1], NotEnoughReplicasError), refusals
        caplog.clear()
        await stream.enqueue(100)
        held = stream.event_ids[first:]

        async def relay_refused() -> bool:
            return any("NotEnoughReplicas" in r.getMessage() for r in caplog.records)

        await until("the relay's write refused with NOT_ENOUGH_REPLICAS", relay_refused, 60)
        await asyncio.sleep(3.0)  # the relay keeps retrying; nothing may get through meanwhile
        assert await count(pool, "SELECT count(*) FROM outbox") == len(held)  # none deleted as published
        assert await count(pool, "SELECT count(*) FROM effects") == first  # none consumed

        # 3. A broker back: the relay's waiting batch goes through, and the consumers catch up.
        back = time.monotonic()
        await asyncio.to_thread(cluster.restart, victim - 1)  # the loop (relay, consumers) keeps running
        restart = time.monotonic() - back
        catch_up = await until(
            "the relay caught up",
            lambda: _at_least(pool, "SELECT count(*) FROM effects", len(stream.event_ids)),
            180,
        )
        assert await count(pool, "SELECT count(*) FROM outbox") == 0
        await asyncio.sleep(1.0)  # a redelivery now would show as a second effect
        effects = await pool.fetch("SELECT event_id, member FROM effects")
        deliveries = await count(pool, "SELECT count(*) FROM deliveries")
    finally:
        stop.set()
        if streaming is not None:
            await streaming
        relaying.cancel()
        await asyncio.gather(relaying, return_exceptions=True)
        for consumer in consumers:
            await consumer.stop()
        await publisher.stop()
    # Exactly once: one effect per event, none lost, none twice.
    assert sorted(row["event_id"] for row in effects) == sorted(stream.event_ids)
    assert {row["member"] for row in effects} == {"A", "B"}
    print(
        f"rf3: {len(stream.event_ids)} events ({first} before the second kill, {len(held)} held), "
        f"{deliveries} deliveries; broker {victim} killed: {len(moved)} of 12 leaders moved in {failover:.1f}s, "
        f"stream drained {drain:.1f}s later; 2 brokers down: write refused (NotEnoughReplicasError), "
        f"{len(held)} events kept in the outbox; broker back (restart {restart:.0f}s): "
        f"caught up {catch_up:.1f}s later; "
        f"test {time.monotonic() - started:.0f}s"
    )


async def _at_least(pool: asyncpg.Pool, query: str, wanted: int) -> bool:
    return await count(pool, query) >= wanted
