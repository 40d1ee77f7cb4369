"""The consume step every service runs per Kafka record (arroyo's ``RunTask``, ADR 0021).

``consume(message_type, handle)`` is the :class:`~strongroom_platform.eventbus.Handler` of one
topic: decode the record's bytes to ``message_type`` (undecodable or id-less bytes are a
:class:`PoisonRecord`, sent to the DLQ), then ``await handle(event)``. The handler owns its
transaction and claims the event inside it (``tx.claim_event``), so state and claim commit
together; the step itself touches no database.

An :class:`~strongroom_platform.errors.InvalidArgument` from the handler means the event can
never apply: it becomes a ``PoisonRecord`` too, instead of blocking its partition with retries.
Any other exception is retried by the consumer (a database outage loses nothing).

Each attempt runs in a CONSUMER span continuing the trace of the record's ``traceparent`` header
(ADR 0039), so the handler's log lines, its gRPC calls and the events it enqueues belong to the
trace of the change that produced the event.

``consume_batch(message_type, handle)`` is the same step for a handler that takes several events
at once — the records a partition worker holds — and applies them in one transaction (a
:class:`~strongroom_platform.eventbus.BatchHandler`, ADR 0050): ``handle`` gets an iterable of
events, and while it works on one event that record's span is the current one. A single record (and
every record of a batch that failed, one at a time) takes the path of ``consume``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Generic, TypeVar

from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from strongroom_telemetry.propagation import context_from_headers

from strongroom_platform.errors import InvalidArgument
from strongroom_platform.eventbus import BatchHandler, Handler, PoisonRecord, Record
from strongroom_platform.events import decode

__all__ = ["consume", "consume_batch"]

M = TypeVar("M", bound=Message)


def consume(
    message_type: type[M],
    handle: Callable[[M], Awaitable[object]],
    *,
    tracer_provider: trace.TracerProvider | None = None,
) -> Handler:
    """The record handler that decodes ``message_type`` and calls ``handle`` with the event."""
    tracer = trace.get_tracer("strongroom.consume", tracer_provider=tracer_provider)

    async def run(record: Record) -> None:
        with _span(tracer, record):
            event = decode(message_type, record.value)
            try:
                await handle(event)
            except InvalidArgument as exc:
                raise PoisonRecord(f"{message_type.__name__} {record.topic}@{record.offset}: {exc}") from exc

    return run


def _span(tracer: trace.Tracer, record: Record) -> AbstractContextManager[trace.Span]:
    """The CONSUMER span of handling ``record``, continuing the trace of its ``traceparent``."""
    return tracer.start_as_current_span(
        f"{record.topic} process",
        context=context_from_headers(record.headers),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": record.topic,
            "messaging.kafka.partition": record.partition,
            "messaging.kafka.offset": record.offset,
        },
    )


class _BatchStep(Generic[M]):
    """``consume_batch``'s handler: one record as ``consume`` does, or several in one call of ``handle``."""

    def __init__(
        self,
        message_type: type[M],
        handle: Callable[[Iterable[M]], Awaitable[object]],
        tracer_provider: trace.TracerProvider | None,
    ) -> None:
        self._message_type = message_type
        self._handle = handle
        self._tracer = trace.get_tracer("strongroom.consume", tracer_provider=tracer_provider)
        self._one = consume(message_type, lambda event: handle((event,)), tracer_provider=tracer_provider)

    async def __call__(self, record: Record, /) -> None:
        await self._one(record)

    async def handle_batch(self, records: Sequence[Record], /) -> None:
        # Undecodable bytes fail the whole batch (PoisonRecord): its records then run one at a time.
        events = [decode(self._message_type, record.value) for record in records]
        traced = self._traced(records, events)
        try:
            await self._handle(traced)
        finally:
            traced.close()  # ends the span of an event whose handling raised, in this task's context

    def _traced(self, records: Sequence[Record], events: list[M]) -> Generator[M, None, None]:
        for record, event in zip(records, events, strict=True):
            with _span(self._tracer, record):
                yield event


def consume_batch(
    message_type: type[M],
    handle: Callable[[Iterable[M]], Awaitable[object]],
    *,
    tracer_provider: trace.TracerProvider | None = None,
) -> BatchHandler:
    """The batch handler that decodes ``message_type`` records and calls ``handle`` with their events.

    ``handle`` must apply all the events it is given or none (one transaction): if it raises, the
    consumer hands the records to it again one at a time, where an ``InvalidArgument`` makes the
    one record poison (see ``consume``).
    """
    return _BatchStep(message_type, handle, tracer_provider)
