"""LocalTansu: memory-only Kafka-compatible broker, produce/consume round trip; the CLI's --print-env."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from strongroom_servers import LocalTansu, PrerequisiteMissing, probe_kafka
from strongroom_testing.fixtures import start_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture
def tansu() -> Iterator[LocalTansu]:
    with start_or_skip(LocalTansu()) as server:
        yield server


async def test_produce_consume(tansu: LocalTansu) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    # Tansu answers UnknownError to idempotent producers, so idempotence stays off.
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello tansu")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=tansu.bootstrap, group_id=f"g-{topic}", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.value == b"hello tansu"


def test_server_info_and_probe(tansu: LocalTansu) -> None:
    assert tansu.server_info().startswith("Tansu ")
    assert probe_kafka(tansu.bootstrap).api_keys  # answers ApiVersions


def test_cli_print_env_and_sigterm() -> None:
    """`python -m strongroom_servers tansu --print-env` prints the export line, then stops on SIGTERM."""
    try:
        LocalTansu().binary()
    except PrerequisiteMissing as exc:
        pytest.skip(str(exc))
    proc = subprocess.Popen(
        [sys.executable, "-m", "strongroom_servers", "tansu", "--print-env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("export TEST_KAFKA_BOOTSTRAP=127.0.0.1:"), line
        bootstrap = line.strip().split("=", 1)[1]
        assert probe_kafka(bootstrap).api_keys
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
