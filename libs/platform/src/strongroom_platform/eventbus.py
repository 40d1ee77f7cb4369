"""The event bus port: Kafka topics carrying protobuf events.

Producing goes through the transactional outbox (``outbox.py``); only the
outbox relay calls :class:`EventPublisher` directly. Consuming is done by
:class:`EventConsumer`, which feeds each record to a plain async handler and
commits its offset only after the handler returned (at-least-once). Handlers
make redelivery harmless by recording the event id in the same database
transaction as their effect (``inbox.py``).

Adapters: ``eventbus_kafka`` (aiokafka producer, faust-streaming consumer) and
``testing.InMemoryEventBus``; both pass ``strongroom_testing.contracts.eventbus``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

Headers = tuple[tuple[str, bytes], ...]
"""A record's headers in order, as Kafka keeps them: (name, value) pairs; names may repeat."""


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record.

    ``headers`` carry what is not the event itself: ``traceparent`` (the trace the event
    continues, ADR 0039), ``strongroom-error`` on a dead-lettered record.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers = ()


Handler = Callable[[Record], Awaitable[None]]
"""Processes one record. Returning means done (the offset may be committed).

Raising :class:`PoisonRecord` sends the record to ``<topic>.dlq`` and moves on;
any other exception is retried with backoff until it succeeds, so a transient
outage (database down) loses nothing.
"""


class PoisonRecord(Exception):
    """The record can never be processed (undecodable, invalid); it goes to the DLQ."""


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """One record to publish: its topic, key (the instance id), value and headers."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class EventPublisher(Protocol):
    """Writes records to topics."""

    async def publish(self, topic: str, key: bytes, value: bytes, *, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        """Append a record with ``headers``; when this returns, the broker has durably accepted it.

        Records with the same key go to the same partition, so their order is kept.
        """
        ...

    async def publish_batch(self, records: Sequence[OutgoingRecord]) -> list[BaseException | None]:
        """Append ``records`` in order and wait for the broker's answers; per record, None once it is
        durably accepted, else the exception that failed it.

        Records with the same key go to the same partition in the order given. A failed record's
        later records of the same key are not acknowledged before it (the idempotent producer's
        sequence numbers refuse them), so whoever retries failures keeps each key's order.
        """
        ...


class EventConsumer(Protocol):
    """Consumes topics as one consumer group, one handler per topic."""

    async def start(self) -> None:
        """Join the group and begin feeding records to the handlers."""
        ...

    async def stop(self) -> None:
        """Stop feeding, finish the record in flight and commit what was handled."""
        ...


ConsumerFactory = Callable[[str, Mapping[str, Handler]], EventConsumer]
"""Builds a consumer for (group_id, {topic: handler})."""
