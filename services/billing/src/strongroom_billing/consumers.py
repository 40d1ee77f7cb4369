"""Kafka handlers of billing: decode, then call the (idempotent) handler; invalid events go to the DLQ."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from google.protobuf.message import Message
from strongroom.events.v1 import events_pb2
from strongroom_platform.eventbus import Handler, PoisonRecord, Record
from strongroom_platform.events import (
    INSTANCE_ACTIVATED,
    INSTANCE_DEACTIVATED,
    POINT_CREATED,
    VERSION_EXPIRED,
    decode,
)

from strongroom_billing import handlers
from strongroom_billing.errors import InvalidArgument
from strongroom_billing.ports import BillingStore

GROUP_ID = "billing"


def record_handlers(store: BillingStore) -> Mapping[str, Handler]:
    """{topic: handler} for the billing consumer group."""

    def adapt(message_type: type[Message], handle: Callable[[Message, BillingStore], Awaitable[None]]) -> Handler:
        async def on_record(record: Record) -> None:
            event = decode(message_type, record.value)
            try:
                await handle(event, store)
            except InvalidArgument as exc:
                raise PoisonRecord(str(exc)) from exc

        return on_record

    return {
        INSTANCE_ACTIVATED: adapt(events_pb2.InstanceActivated, handlers.handle_instance_activated),  # type: ignore[arg-type]
        INSTANCE_DEACTIVATED: adapt(events_pb2.InstanceDeactivated, handlers.handle_instance_deactivated),  # type: ignore[arg-type]
        POINT_CREATED: adapt(events_pb2.PointCreated, handlers.handle_point_created),  # type: ignore[arg-type]
        VERSION_EXPIRED: adapt(events_pb2.VersionExpired, handlers.handle_version_expired),  # type: ignore[arg-type]
    }
