"""Transactional outbox: events are rows written in the same transaction as the
state change they describe, and a relay publishes them to Kafka afterwards.

Nothing is lost when any process dies: a row is deleted only after the broker
acknowledged the record (at-least-once; consumers deduplicate on event id).
Records are published in insertion order; one relay per schema publishes at a
time (an advisory lock), so the order of events with the same key is kept.

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

import asyncpg
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from strongroom_telemetry.metrics import Metrics, instruments
from strongroom_telemetry.propagation import TRACEPARENT, context_from_traceparent, current_traceparent

from strongroom_platform.clock import Clock
from strongroom_platform.eventbus import EventPublisher
from strongroom_platform.events import TOPIC_MESSAGES

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
    """Publishes outbox rows of one schema, oldest first, then deletes them.

    Args:
        pool: pool bound to the service's schema.
        schema: that schema's name (for the lock and the wake-up channel).
        publisher: the Kafka producer port.
        clock: used for the poll interval.
        poll_interval: seconds between polls when no notification arrives.
        batch_size: rows published per transaction.
        keep_published: mark published rows instead of deleting them, so that
            :meth:`replay_published` can publish them again to a broker that
            lost its data (consumers deduplicate by event id).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        publisher: EventPublisher,
        clock: Clock,
        *,
        poll_interval: float = 1.0,
        batch_size: int = 200,
        keep_published: bool = False,
        metrics: Metrics | None = None,
        tracer_provider: trace.TracerProvider | None = None,
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
        self._wake = asyncio.Event()
        self._lock_id = int.from_bytes(hashlib.sha256(f"outbox:{schema}".encode()).digest()[:8], "big", signed=True)

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows; return how many were published.

        If publishing fails midway, the rows already acknowledged are deleted
        and the error propagates; the rest stay for the next attempt.
        """
        failure: BaseException | None = None
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_id):
                return 0
            rows = await conn.fetch(
                "SELECT id, topic, key, payload, traceparent FROM outbox"
                " WHERE published_at IS NULL ORDER BY id LIMIT $1",
                self._batch_size,
            )
            done: list[int] = []
            for row in rows:
                try:
                    await self._publish(row)
                except Exception as exc:  # commit what was acknowledged, then report
                    failure = exc
                    break
                done.append(row["id"])
            if done and self._keep_published:
                await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", done)
            elif done:
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", done)
        if failure is not None:
            raise failure
        return len(done)

    async def _publish(self, row: asyncpg.Record) -> None:
        topic = row["topic"]
        with self._tracer.start_as_current_span(
            f"{topic} publish",
            context=context_from_traceparent(row["traceparent"]),
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": topic},
        ):
            traceparent = current_traceparent()
            headers = [(TRACEPARENT, traceparent.encode())] if traceparent else []
            await self._publisher.publish(topic, bytes(row["key"]), bytes(row["payload"]), headers=headers)

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
        """Relay forever (until cancelled), woken by NOTIFY or the poll interval."""
        async with self._pool.acquire() as listen_conn:
            await listen_conn.add_listener(_channel(self._schema), self._on_notify)
            try:
                while True:
                    try:
                        while await self.publish_pending() == self._batch_size:
                            pass
                        await self.report_backlog()
                    except (OSError, asyncpg.PostgresError, ConnectionError) as exc:
                        log.warning("outbox relay for %s failed, retrying: %s", self._schema, exc)
                    except Exception:
                        log.exception("outbox relay for %s failed, retrying", self._schema)
                    self._wake.clear()
                    sleeper = asyncio.ensure_future(self._clock.sleep(self._poll_interval))
                    waker = asyncio.ensure_future(self._wake.wait())
                    try:
                        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        sleeper.cancel()
                        waker.cancel()
            finally:
                # The listening connection may have died with the database (the poll kept the relay
                # going meanwhile); its pool discards it, and there is no listener left to remove.
                with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
                    await listen_conn.remove_listener(_channel(self._schema), self._on_notify)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()


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
