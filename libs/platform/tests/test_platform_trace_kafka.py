"""A trace crosses the outbox and Kafka: PostgreSQL row -> relay -> Kafka header -> consumer span.

Real PostgreSQL and Kafka: the event is enqueued inside a span; the row keeps its ``traceparent``;
the relay publishes it in a PRODUCER span and sends that span's ``traceparent`` as a record
header; the consume step runs the handler in a CONSUMER span of the same trace. The outbox
backlog gauge counts what is still unpublished.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import SystemClock
from strongroom_platform.consume import consume
from strongroom_platform.db import Migration, create_pool, migrate, outbox_shard_migration, outbox_traceparent_migration
from strongroom_platform.eventbus import OutgoingRecord, Record
from strongroom_platform.eventbus_kafka import FaustConsumer, KafkaPublisher
from strongroom_platform.events import JOB_REQUESTED, new_meta
from strongroom_platform.outbox import OUTBOX_DDL, OutboxRelay, enqueue
from strongroom_platform.telemetry import Metrics
from strongroom_testing.contracts.eventbus import wait_for

pytestmark = pytest.mark.integration

SCHEMA = "tracetest"


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(pg_dsn, SCHEMA, max_size=4)
    await migrate(pool, SCHEMA, [Migration(1, OUTBOX_DDL), outbox_traceparent_migration(2), outbox_shard_migration(3)])
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _gauge(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, object], ...], float]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        tuple(sorted((point.attributes or {}).items())): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points  # type: ignore[union-attr]
    }


async def test_one_trace_from_the_enqueuing_span_to_the_consumer(
    pool: asyncpg.Pool, kafka_bootstrap: str, tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = tracing
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider(metric_readers=[reader]))
    topic = JOB_REQUESTED  # the registry's message type; a fresh group reads it from the start
    job_id = f"j-{uuid.uuid4().hex[:8]}"
    with provider.get_tracer("test").start_as_current_span("operator call") as origin:
        async with pool.acquire() as conn, conn.transaction():
            event = events_pb2.JobRequested(
                meta=new_meta("test", SystemClock().now()), account_id="a", instance_id="i-1", job_id=job_id
            )
            await enqueue(conn, topic, "i-1", event)
    stored = await pool.fetchval("SELECT traceparent FROM outbox")
    trace_id = f"{origin.get_span_context().trace_id:032x}"
    assert stored.split("-")[1] == trace_id

    seen: dict[str, int] = {}
    records: list[Record] = []

    async def handle(received: events_pb2.JobRequested) -> None:
        seen[received.job_id] = trace.get_current_span().get_span_context().trace_id

    decode_and_handle = consume(events_pb2.JobRequested, handle, tracer_provider=provider)

    async def handler(record: Record) -> None:
        records.append(record)
        await decode_and_handle(record)

    async with KafkaPublisher(kafka_bootstrap, idempotent=True) as publisher:
        relay = OutboxRelay(pool, SCHEMA, publisher, SystemClock(), metrics=metrics, tracer_provider=provider)
        assert await relay.report_backlog() == 1
        assert _gauge(reader, "strongroom.outbox.backlog") == {(("schema", SCHEMA),): 1}
        assert await relay.publish_pending() == 1
        assert await relay.report_backlog() == 0
        consumer = FaustConsumer(
            kafka_bootstrap, f"trace-{uuid.uuid4().hex[:8]}", {topic: handler}, session_timeout=6.0, metrics=metrics
        )
        await consumer.start()
        try:
            await wait_for(lambda: job_id in seen, "the consumer to handle the event", within=90)
        finally:
            await consumer.stop()

    assert seen[job_id] == origin.get_span_context().trace_id
    (record,) = [r for r in records if job_id.encode() in r.value]
    assert [name for name, _ in record.headers].count("traceparent") == 1
    spans = exporter.get_finished_spans()
    (producer,) = [s for s in spans if s.kind is SpanKind.PRODUCER]
    consumers = [s for s in spans if s.kind is SpanKind.CONSUMER and s.context.trace_id == producer.context.trace_id]
    assert producer.context.trace_id == origin.get_span_context().trace_id
    assert producer.parent is not None and producer.parent.span_id == origin.get_span_context().span_id
    assert producer.name == f"{topic} publish"
    assert consumers and all(c.parent is not None and c.parent.span_id == producer.context.span_id for c in consumers)
    assert dict(record.headers)["traceparent"].decode().split("-")[2] == f"{producer.context.span_id:016x}"
    # The consumer reported its lag for the partition it read: nothing left once the record was handled.
    lags = _gauge(reader, "strongroom.consumer.lag")
    assert lags and any(dict(labels)["topic"] == topic and value == 0 for labels, value in lags.items())


async def test_an_event_enqueued_outside_any_span_gets_a_trace_of_its_own(
    pool: asyncpg.Pool, tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = tracing
    async with pool.acquire() as conn, conn.transaction():
        event = events_pb2.JobRequested(meta=new_meta("test", SystemClock().now()), instance_id="i-1", job_id="j")
        await enqueue(conn, JOB_REQUESTED, "i-1", event)
    assert await pool.fetchval("SELECT traceparent FROM outbox") is None
    sent: list[list[tuple[str, bytes]]] = []

    class Publisher:
        async def publish(self, topic: str, key: bytes, value: bytes, *, headers: object = ()) -> None:
            sent.append(list(headers))  # type: ignore[call-overload]

        async def publish_batch(self, records: list[OutgoingRecord]) -> list[BaseException | None]:
            sent.extend(list(record.headers) for record in records)
            return [None] * len(records)

    relay = OutboxRelay(pool, SCHEMA, Publisher(), SystemClock(), tracer_provider=provider)
    assert await relay.publish_pending() == 1
    (producer,) = exporter.get_finished_spans()
    assert producer.parent is None
    ((name, value),) = sent[0]
    assert name == "traceparent"
    assert value.decode().split("-")[1:3] == [f"{producer.context.trace_id:032x}", f"{producer.context.span_id:016x}"]
