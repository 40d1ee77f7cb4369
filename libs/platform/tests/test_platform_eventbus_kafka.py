"""Details of the Kafka adapters beyond the event bus contract."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from strongroom_platform.eventbus import OutgoingRecord, PoisonRecord, Record
from strongroom_platform.eventbus_kafka import (
    DLQ_ERROR_HEADER,
    FaustConsumer,
    KafkaPublisher,
    create_topics,
    dlq_topic,
)
from strongroom_servers import LocalTansu
from strongroom_testing.contracts.eventbus import wait_for
from test_platform_eventbus_contract import read_records


async def _noop(record: Record) -> None:
    return None


async def test_publish_before_start_is_an_error() -> None:
    publisher = KafkaPublisher("127.0.0.1:1", idempotent=False)
    with pytest.raises(RuntimeError, match="before start"):
        await publisher.publish("t", b"k", b"v")
    await publisher.stop()  # stopping a never-started publisher is harmless


def test_consumer_needs_a_handler() -> None:
    with pytest.raises(ValueError, match="at least one"):
        FaustConsumer("127.0.0.1:1", "g", {})


async def test_consumer_is_built_without_touching_the_broker() -> None:
    # Port 1 has no broker: construction must not connect; stop before start is a no-op.
    consumer = FaustConsumer("127.0.0.1:1", f"g-{uuid.uuid4().hex[:8]}", {"topic-a": _noop, "topic-b": _noop})
    await consumer.stop()


def test_dlq_topic_name() -> None:
    assert dlq_topic("job-requested") == "job-requested.dlq"


@pytest.fixture(scope="module")
def tansu_bootstrap() -> Iterator[str]:
    with LocalTansu() as tansu:
        yield tansu.bootstrap


@pytest.fixture
async def publisher(tansu_bootstrap: str) -> AsyncIterator[KafkaPublisher]:
    async with KafkaPublisher(tansu_bootstrap, idempotent=False) as publisher:
        yield publisher


@pytest.mark.integration
async def test_create_topics_is_idempotent_with_one_partition(tansu_bootstrap: str) -> None:
    names = [f"ct-{uuid.uuid4().hex[:8]}", f"ct-{uuid.uuid4().hex[:8]}"]
    await create_topics(tansu_bootstrap, names)
    await create_topics(tansu_bootstrap, names + names)  # existing topics are fine
    admin = AIOKafkaAdminClient(bootstrap_servers=tansu_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    assert sorted(t["topic"] for t in described) == sorted(names)
    assert all(len(t["partitions"]) == 1 for t in described)


@pytest.mark.integration
async def test_dead_lettered_record_keeps_key_value_and_carries_the_error(
    tansu_bootstrap: str, publisher: KafkaPublisher
) -> None:
    topic = f"dlq-{uuid.uuid4().hex[:8]}"
    handled: list[bytes] = []

    async def handler(record: Record) -> None:
        if record.value.startswith(b"bad"):
            raise PoisonRecord(f"undecodable record at offset {record.offset}")
        handled.append(record.value)

    consumer = FaustConsumer(tansu_bootstrap, f"g-{topic}", {topic: handler}, session_timeout=2.0)
    await consumer.start()  # creates the topic and its DLQ
    try:
        await publisher.publish(topic, b"key-1", b"bad \x00\xff bytes")
        await publisher.publish(topic, b"key-2", b"fine")
        await wait_for(lambda: handled == [b"fine"], "the record after the poison one")
    finally:
        await consumer.stop()
    [(key, value, headers)] = await read_records(tansu_bootstrap, dlq_topic(topic), 1, 30.0)
    assert (key, value) == (b"key-1", b"bad \x00\xff bytes")
    assert dict(headers)[DLQ_ERROR_HEADER] == b"undecodable record at offset 0"


@pytest.mark.integration
async def test_consumer_can_be_started_only_once(tansu_bootstrap: str) -> None:
    topic = f"once-{uuid.uuid4().hex[:8]}"
    consumer = FaustConsumer(tansu_bootstrap, f"g-{topic}", {topic: _noop}, session_timeout=2.0)
    await consumer.start()
    try:
        with pytest.raises(RuntimeError, match="only once"):
            await consumer.start()
    finally:
        await consumer.stop()


@pytest.mark.integration
async def test_a_consumer_leaves_nothing_in_the_working_directory(
    tansu_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust's data directory is private and temporary, not "<group>-data" in the working directory."""
    monkeypatch.chdir(tmp_path)
    topic = f"cwd-{uuid.uuid4().hex[:8]}"
    consumer = FaustConsumer(tansu_bootstrap, f"g-{topic}", {topic: _noop}, session_timeout=2.0)
    datadir = Path(consumer._datadir.name)
    await consumer.start()
    try:
        assert datadir.is_dir()
    finally:
        await consumer.stop()
    assert list(tmp_path.iterdir()) == []
    assert not datadir.exists()


@pytest.mark.integration
async def test_a_batch_lands_each_key_on_its_publish_partition_in_order(
    tansu_bootstrap: str, publisher: KafkaPublisher
) -> None:
    topic = f"batch-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=tansu_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        await admin.close()
    keys = [f"instance-{i}".encode() for i in range(12)]
    for key in keys:  # one record each through publish: the partition every later one must share
        await publisher.publish(topic, key, key + b":0")
    batch = [OutgoingRecord(topic, key, key + f":{n}".encode(), (("h", b"v"),)) for n in range(1, 6) for key in keys]
    assert await publisher.publish_batch(batch) == [None] * len(batch)
    seen: dict[bytes, list[tuple[int, bytes]]] = {}
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=tansu_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        while sum(len(v) for v in seen.values()) < len(keys) * 6:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    assert record.key is not None and record.value is not None
                    seen.setdefault(record.key, []).append((record.partition, record.value))
    finally:
        await consumer.stop()
    for key in keys:
        partitions = {partition for partition, _ in seen[key]}
        assert len(partitions) == 1, key
        assert [value for _, value in seen[key]] == [key + f":{n}".encode() for n in range(6)]
    assert len({seen[key][0][0] for key in keys}) > 1  # the keys spread over partitions


class _LoopTurnsBatchHandler:
    """A batch handler whose every call takes ``turns`` event-loop iterations and no wall time: the
    shape of a transaction's database round trips, without a database."""

    def __init__(self, turns: int) -> None:
        self.turns = turns
        self.calls: list[list[bytes]] = []

    async def __call__(self, record: Record) -> None:
        await self.handle_batch([record])

    async def handle_batch(self, records: Sequence[Record]) -> None:
        for _ in range(self.turns):
            await asyncio.sleep(0)
        self.calls.append([record.value for record in records])

    def values(self) -> list[bytes]:
        return [value for call in self.calls for value in call]


@pytest.mark.integration
async def test_a_burst_reaches_the_partition_workers_in_large_batches(kafka_bootstrap: str) -> None:
    """The fetch loop hands a fetched batch to the partitions' streams in one go (``faust_transport``):
    a burst reaches a handler that takes a few loop turns per call in a few large batches. Faust's
    own loop raced four tasks per record, so records trickled in at the pace of the loop's turns and
    such a handler got them one or two at a time (ADR 0050 session 7)."""
    topic = f"burst-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])  # an unregistered name: create_topics makes 1
    finally:
        await admin.close()
    handler = _LoopTurnsBatchHandler(turns=20)
    keys = [f"instance-{i}".encode() for i in range(30)]
    async with KafkaPublisher(kafka_bootstrap, idempotent=True) as publisher:
        consumer = FaustConsumer(kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}", {topic: handler}, session_timeout=6.0)
        await consumer.start()
        try:
            warm_up = [OutgoingRecord(topic, key, key + b":warm") for key in keys]  # every partition assigned
            assert await publisher.publish_batch(warm_up) == [None] * len(warm_up)
            await wait_for(lambda: len(handler.values()) == len(warm_up), "the warm-up", within=60)
            handler.calls.clear()
            burst = [OutgoingRecord(topic, key, key + f":{n}".encode()) for n in range(20) for key in keys]
            assert await publisher.publish_batch(burst) == [None] * len(burst)
            await wait_for(lambda: len(handler.values()) == len(burst), "the burst", within=60)
        finally:
            await consumer.stop()
    for key in keys:  # each key's records once, in order
        assert [v for v in handler.values() if v.split(b":")[0] == key] == [key + f":{n}".encode() for n in range(20)]
    # 600 records over 3 partitions: a handful of fetches, not hundreds of trickled batches.
    assert len(handler.calls) <= 30, [len(call) for call in handler.calls]
