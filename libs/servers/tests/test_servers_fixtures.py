"""The strongroom_testing server fixtures (loaded by the root conftest) against whatever servers they resolve.

These run against the session's shared servers: an environment endpoint, testcontainers or the
local launchers, so they check the fixtures' contract rather than one launcher.
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from minio import Minio
from minio.commonconfig import COMPLIANCE
from minio.error import S3Error
from minio.retention import Retention
from strongroom_testing.fixtures import S3Config

pytestmark = pytest.mark.integration


async def test_pg_dsn_is_a_fresh_database(pg_dsn: str, pg_server_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        await conn.execute("CREATE TABLE scratch (id int)")  # left for the fixture's DROP ... FORCE
    finally:
        await conn.close()
    assert name.startswith("t_")
    assert tables == 0
    assert pg_dsn != pg_server_dsn


async def test_kafka_bootstrap_round_trip(kafka_bootstrap: str) -> None:
    topic = f"fixture-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"via fixture")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.value == b"via fixture"


def test_s3_config_supports_object_lock(s3_config: S3Config) -> None:
    client = Minio(
        s3_config.endpoint,
        access_key=s3_config.access_key,
        secret_key=s3_config.secret_key,
        secure=s3_config.secure,
    )
    bucket = f"fx-{uuid.uuid4().hex[:12]}"
    client.make_bucket(bucket, object_lock=True)
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    put = client.put_object(bucket, "o", io.BytesIO(b"data"), 4, retention=Retention(COMPLIANCE, until))
    with pytest.raises(S3Error):
        client.remove_object(bucket, "o", version_id=put.version_id)
    assert s3_config.server_info.startswith("S3 ")
