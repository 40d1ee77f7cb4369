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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from strongroom_telemetry.propagation import context_from_headers

from strongroom_platform.errors import InvalidArgument
from strongroom_platform.eventbus import Handler, PoisonRecord, Record
from strongroom_platform.events import decode

__all__ = ["consume"]

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
        with tracer.start_as_current_span(
            f"{record.topic} process",
            context=context_from_headers(record.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.kafka.partition": record.partition,
                "messaging.kafka.offset": record.offset,
            },
        ):
            event = decode(message_type, record.value)
            try:
                await handle(event)
            except InvalidArgument as exc:
                raise PoisonRecord(f"{message_type.__name__} {record.topic}@{record.offset}: {exc}") from exc

    return run
