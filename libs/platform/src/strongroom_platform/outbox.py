"""Transactional outbox: events are rows written in the same transaction as the
state change they describe, and a relay publishes them to Kafka afterwards.

Nothing is lost when any process dies: a row is deleted only after the broker
acknowledged the record (at-least-once; consumers deduplicate on event id).

Batches and replicas (ADR 0050): every row has a ``shard`` (a hash of its key, the instance id,
into :data:`SHARDS`; column added by :data:`OUTBOX_SHARD_DDL`). A relay pass locks at most half of
the shards that have pending rows (transaction-scoped advisory locks, ``SKIP``-style: a locked
shard is left to whoever holds it), takes up to ``batch_size`` of their rows in insertion order,
hands them to the producer in one go (``EventPublisher.publish_batch``, the idempotent producer)
and deletes the acknowledged ones in the same transaction. Replicas of a service therefore relay
different shards at the same time, and the rows of one key are only ever published by one relay
at a time, oldest first: each key's order is kept.

Each row keeps the ``traceparent`` of the span that enqueued it (column added by
:data:`OUTBOX_TRACEPARENT_DDL`, which every service's migrations append; ADR 0039). The relay
publishes a row in a PRODUCER span continuing that trace and sends the span's ``traceparent`` as
a Kafka header, so the consumer continues the same trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Sequence

import asyncpg
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from strongroom_telemetry.metrics import Metrics, instruments
from strongroom_telemetry.propagation import (
    TRACEPARENT,
    context_from_traceparent,
    current_traceparent,
    traceparent_of,
)

from strongroom_platform.clock import Clock, sleep_or_event
from strongroom_platform.eventbus import EventPublisher, OutgoingRecord
from strongroom_platform.events import TOPIC_MESSAGES
from strongroom_platform.pg_listen import Listener

log = logging.getLogger(__name__)

OUTBOX_DDL = """
CREATE TABLE IF NOT EXISTS outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    key bytea NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set instead of deleting the row when the relay keeps published events
    -- (standalone mode, whose in-memory broker forgets everything on restart).
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE published_at IS NULL;
"""
# What a service's role needs on its outbox (ADR 0031): the relay marks or deletes published rows.
OUTBOX_PRIVILEGES = "SELECT, INSERT, UPDATE (published_at), DELETE"

OUTBOX_TRACEPARENT_DDL = """
-- The W3C traceparent of the span that enqueued the event (NULL: none); sent as a Kafka header.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS traceparent text CHECK (length(traceparent) <= 128);
"""
"""The outbox's trace column: every schema with :data:`OUTBOX_DDL` appends it as a later migration
(``db.outbox_traceparent_migration(version)``); :func:`enqueue` writes it."""


SHARDS = 16
"""Shards of the outbox: a relay pass claims up to half of those with pending rows."""

OUTBOX_SHARD_DDL = f"""
-- Which relay may publish the row (ADR 0050): rows of one key share a shard, so one relay at a time
-- publishes them, in order.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS shard smallint
    GENERATED ALWAYS AS ((get_byte(sha256(key), 0) % {SHARDS})::smallint) STORED;
CREATE INDEX IF NOT EXISTS outbox_pending_by_shard ON outbox (shard, id) WHERE published_at IS NULL;
"""
"""The outbox's shard column: every schema with :data:`OUTBOX_DDL` appends it as a later migration
(``db.outbox_shard_migration(version)``)."""

# Lock the shards of one pass: those with pending rows, in random order, at most half of them
# (at least one), skipping any another relay holds. LIMIT stops the scan, so no more are locked.
_CLAIM_SHARDS = f"""
WITH pending AS MATERIALIZED (
    SELECT s::smallint AS shard FROM generate_series(0, {SHARDS - 1}) AS s
    WHERE EXISTS (SELECT 1 FROM outbox WHERE shard = s AND published_at IS NULL)
    ORDER BY random()
)
SELECT shard FROM pending WHERE pg_try_advisory_xact_lock($1::int, shard)
LIMIT (SELECT greatest(1, ceil(count(*) / 2.0))::int FROM pending)
"""


def _channel(schema: str) -> str:
    return f"outbox_{schema}"


async def enqueue(conn: asyncpg.Connection, topic: str, key: str, event: Message) -> None:
    """Add ``event`` to the outbox inside the caller's open transaction.

    The current span's ``traceparent`` is stored with it. Raises ValueError if ``event`` is not
    the registered message type of ``topic``.
    """
    expected = TOPIC_MESSAGES.get(topic)
    if expected is None or not isinstance(event, expected):
        raise ValueError(f"{type(event).__name__} is not the message type of topic {topic!r}")
    if not conn.is_in_transaction():
        raise RuntimeError("outbox.enqueue must run inside the transaction of the state change")
    await conn.execute(
        "INSERT INTO outbox (topic, key, payload, traceparent) VALUES ($1, $2, $3, $4)",
        topic,
        key.encode(),
        event.SerializeToString(),
        current_traceparent(),
    )
    schema = await conn.fetchval("SELECT current_schema()")
    await conn.execute("SELECT pg_notify($1, '')", _channel(schema))


class OutboxRelay:
    """Publishes outbox rows of one schema in batches, oldest first per key, then deletes them.

    Args:
        pool: pool bound to the service's schema.
        schema: that schema's name (for the shard locks and the wake-up channel).
        publisher: the Kafka producer port.
        clock: used for the poll interval.
        poll_interval: seconds between polls when no notification arrives.
        batch_size: rows published per transaction.
        keep_published: mark published rows instead of deleting them, so that
            :meth:`replay_published` can publish them again to a broker that
            lost its data (consumers deduplicate by event id).
        listen_check_interval: seconds between liveness checks of the connection listening for
            wake-ups (``pg_listen.Listener``; a lost one is replaced).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        publisher: EventPublisher,
        clock: Clock,
        *,
        poll_interval: float = 1.0,
        batch_size: int = 2000,
        keep_published: bool = False,
        metrics: Metrics | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        listen_check_interval: float = 10.0,
    ) -> None:
        self._keep_published = keep_published
        self._metrics = metrics or instruments()
        self._tracer = trace.get_tracer("strongroom.outbox", tracer_provider=tracer_provider)
        self._pool = pool
        self._schema = schema
        self._publisher = publisher
        self._clock = clock
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._listen_check_interval = listen_check_interval
        self._wake = asyncio.Event()
        self._lock_key = int.from_bytes(hashlib.sha256(f"outbox:{schema}".encode()).digest()[:4], "big", signed=True)

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows of the shards this pass claims; return how many were published.

        If publishing fails for some rows, the acknowledged ones are deleted and the first
        failure propagates; a failed row and the later rows of its key stay for the next attempt.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            shards = [row["shard"] for row in await conn.fetch(_CLAIM_SHARDS, self._lock_key)]
            if not shards:
                return 0
            rows = await conn.fetch(
                "SELECT id, topic, key, payload, traceparent FROM outbox"
                " WHERE published_at IS NULL AND shard = ANY($1::smallint[]) ORDER BY id LIMIT $2",
                shards,
                self._batch_size,
            )
            outcomes = await self._publish(rows)
            done, failure = acknowledged(rows, outcomes)
            if done and self._keep_published:
                await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", done)
            elif done:
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", done)
        if failure is not None:
            raise failure
        return len(done)

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> list[BaseException | None]:
        """Publish ``rows`` as one batch, each in its PRODUCER span continuing the enqueuer's trace."""
        spans = []
        records = []
        for row in rows:
            topic = row["topic"]
            span = self._tracer.start_span(
                f"{topic} publish",
                context=context_from_traceparent(row["traceparent"]),
                kind=SpanKind.PRODUCER,
                attributes={"messaging.system": "kafka", "messaging.destination.name": topic},
            )
            traceparent = traceparent_of(trace.set_span_in_context(span))
            headers = ((TRACEPARENT, traceparent.encode()),) if traceparent else ()
            spans.append(span)
            records.append(OutgoingRecord(topic, bytes(row["key"]), bytes(row["payload"]), headers))
        try:
            outcomes = await self._publisher.publish_batch(records)
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR))
                span.end()
            raise
        for span, outcome in zip(spans, outcomes, strict=True):
            if outcome is not None:
                span.record_exception(outcome)
                span.set_status(Status(StatusCode.ERROR))
            span.end()
        return outcomes

    async def report_backlog(self) -> int:
        """Count the events not yet published and set the ``strongroom_outbox_backlog`` gauge; return the count."""
        async with self._pool.acquire() as conn:
            pending = int(await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
        self._metrics.outbox_backlog.set(pending, {"schema": self._schema})
        return pending

    async def replay_published(self) -> int:
        """Mark every kept, already published row pending again; return how many.

        Used when the broker is known to have lost its log (an in-memory broker
        after a restart): everything is published again, in the original order.
        """
        async with self._pool.acquire() as conn:
            result = await conn.execute("UPDATE outbox SET published_at = NULL WHERE published_at IS NOT NULL")
        return int(result.split()[-1])

    async def run(self) -> None:
        """Relay forever (until cancelled), woken by NOTIFY or the poll interval.

        The wake-ups come over a ``pg_listen.Listener``, which listens again after its connection
        is lost (a database restart) and wakes the relay then.
        """
        listener = Listener(
            self._pool,
            [_channel(self._schema)],
            lambda _channel, _payload: self._wake.set(),
            on_listening=self._wake.set,
            clock=self._clock,
            check_interval=self._listen_check_interval,
        )
        listening = asyncio.create_task(listener.run(), name=f"outbox-listen-{self._schema}")
        try:
            while True:
                try:
                    while await self.publish_pending() > 0:
                        pass
                    await self.report_backlog()
                except (OSError, asyncpg.PostgresError, ConnectionError) as exc:
                    log.warning("outbox relay for %s failed, retrying: %s", self._schema, exc)
                except Exception:
                    log.exception("outbox relay for %s failed, retrying", self._schema)
                self._wake.clear()
                await sleep_or_event(self._clock, self._poll_interval, self._wake)
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening


def acknowledged(
    rows: Sequence[asyncpg.Record], outcomes: Sequence[BaseException | None]
) -> tuple[list[int], BaseException | None]:
    """The ids of ``rows`` that may be marked published, and the first failure (None: none).

    A row is done when its record was acknowledged and no earlier row of its key failed: from a
    key's first failure on, its rows stay pending and are published again in order (a duplicate
    the consumers' inbox ignores, never an effect out of order).
    """
    failed_keys: set[tuple[str, bytes]] = set()
    done: list[int] = []
    failure: BaseException | None = None
    for row, outcome in zip(rows, outcomes, strict=True):
        key = (row["topic"], bytes(row["key"]))
        if outcome is not None:
            failed_keys.add(key)
            failure = failure or outcome
        elif key not in failed_keys:
            done.append(row["id"])
    return done, failure


async def start_relay(
    pool: asyncpg.Pool, schema: str, publisher: EventPublisher, clock: Clock, *, replay: bool
) -> asyncio.Task[None]:
    """Start the relay of ``schema`` as a background task (cancel it to stop).

    With ``replay`` (standalone mode) published rows are kept and all of them
    are published again first.
    """
    relay = OutboxRelay(pool, schema, publisher, clock, keep_published=replay)
    if replay:
        count = await relay.replay_published()
        log.info("outbox %s: replaying %d published events to a fresh broker", schema, count)
    return asyncio.create_task(relay.run(), name=f"outbox-relay-{schema}")
