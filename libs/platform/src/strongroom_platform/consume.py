"""The consume step every service runs per Kafka record (arroyo's ``RunTask``, ADR 0021).

``consume(message_type, handle)`` is the :class:`~strongroom_platform.eventbus.Handler` of one
topic: decode the record's bytes to ``message_type`` (undecodable or id-less bytes are a
:class:`PoisonRecord`, sent to the DLQ), then ``await handle(event)``. The handler owns its
transaction and claims the event inside it (``tx.claim_event``), so state and claim commit
together; the step itself touches no database.

An :class:`~strongroom_platform.errors.InvalidArgument` from the handler means the event can
never apply: it becomes a ``PoisonRecord`` too, instead of blocking its partition with retries.
Any other exception is retried by the consumer (a database outage loses nothing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message

from strongroom_platform.errors import InvalidArgument
from strongroom_platform.eventbus import Handler, PoisonRecord, Record
from strongroom_platform.events import decode

__all__ = ["consume"]

M = TypeVar("M", bound=Message)


def consume(message_type: type[M], handle: Callable[[M], Awaitable[object]]) -> Handler:
    """The record handler that decodes ``message_type`` and calls ``handle`` with the event."""

    async def run(record: Record) -> None:
        event = decode(message_type, record.value)
        try:
            await handle(event)
        except InvalidArgument as exc:
            raise PoisonRecord(f"{message_type.__name__} {record.topic}@{record.offset}: {exc}") from exc

    return run
