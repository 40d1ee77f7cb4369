"""LocalKafka: real broker from Maven jars, produce/consume round trip with aiokafka, protocol probe, restart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from strongroom_servers import KAFKA_VERSION, LocalKafka, probe_kafka
from strongroom_servers.kafka_probe import metadata_request_ok, metadata_version_name
from strongroom_testing.fixtures import start_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    with start_or_skip(LocalKafka(tmp_path_factory.mktemp("kafka"))) as server:
        yield server


async def test_produce_consume_round_trip(kafka: LocalKafka) -> None:
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(topic, f"value-{i}".encode(), key=b"k")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received: list[bytes] = []
        while len(received) < 3:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, "no records within 10 s"
            for records in batch.values():
                received += [r.value for r in records if r.value is not None]
        await consumer.commit()
    finally:
        await consumer.stop()
    assert received == [b"value-0", b"value-1", b"value-2"]


def test_probe_reports_metadata_version(kafka: LocalKafka) -> None:
    info = probe_kafka(kafka.bootstrap)
    assert info.api_versions_version == 3
    major_minor = ".".join(KAFKA_VERSION.split(".")[:2])
    assert info.metadata_version == f"{major_minor}-IV0"
    assert info.release_line == major_minor
    assert kafka.server_info().startswith(f"Kafka {KAFKA_VERSION} (metadata.version {major_minor}-IV0")
    assert metadata_request_ok(kafka.bootstrap)


def test_metadata_version_names() -> None:
    assert metadata_version_name(21) == "3.9-IV0"
    assert metadata_version_name(30) == "4.3-IV0"
    assert metadata_version_name(999) == "level 999"


async def test_restart_on_same_work_dir_keeps_topics(tmp_path: Path) -> None:
    topic = "survives-restart"
    with start_or_skip(LocalKafka(tmp_path / "k")) as first:
        producer = AIOKafkaProducer(bootstrap_servers=first.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"before-restart")
        finally:
            await producer.stop()
    assert not first.alive

    with start_or_skip(LocalKafka(tmp_path / "k")) as second:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=second.bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        try:
            record = await consumer.getone()
        finally:
            await consumer.stop()
    assert record.value == b"before-restart"
