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
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class BatchHandler(Protocol):
    """A :data:`Handler` that can also take the records a partition worker has at hand in one go.

    ``handle_batch(records)`` (one partition's records, in order) applies them all or none — one
    transaction, one commit — and raises if any cannot be applied. The consumer then runs the same
    records one at a time through ``__call__`` (the ``Handler``: its retries, its dead-letter path),
    so a poison record still goes to the dead-letter topic alone and the others are applied once
    (``poison.run_batch``). Consumers call ``handle_batch`` only for records of one partition.
    """

    async def __call__(self, record: Record, /) -> None:
        """Process one record, as a :data:`Handler`."""
        ...

    async def handle_batch(self, records: Sequence[Record], /) -> None:
        """Process ``records`` (in order) all together, or fail having applied none of them."""
        ...


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
