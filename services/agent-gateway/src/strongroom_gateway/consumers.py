"""Kafka consumers: decode, claim the event id and apply the handler in one transaction, then wake sessions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from strongroom.events.v1 import events_pb2
from strongroom_platform import events
from strongroom_platform.clock import Clock
from strongroom_platform.eventbus import Handler, Record

from strongroom_gateway import handlers
from strongroom_gateway.handlers import CONSUMER, SessionEffect
from strongroom_gateway.ports import GatewayStore, GatewayTx
from strongroom_gateway.sessions import SessionRegistry

GROUP_ID = "agent-gateway"

M = TypeVar("M", bound=Message)
EventHandler = Callable[..., Awaitable[SessionEffect | None]]


def _consumer(
    message_type: type[M], handler: EventHandler, store: GatewayStore, clock: Clock, sessions: SessionRegistry
) -> Handler:
    async def consume(record: Record) -> None:
        event = events.decode(message_type, record.value)
        meta = getattr(event, "meta")  # noqa: B009 - every event message has meta
        tx: GatewayTx
        async with store.transaction() as tx:
            if not await tx.claim_event(CONSUMER, meta.event_id):
                return
            effect = await handler(event, tx=tx, clock=clock)
        if effect is None:
            return
        if effect.disconnect:
            sessions.disconnect(effect.instance_id, "credential revoked: backup was deactivated for this instance")
        else:
            sessions.wake(effect.instance_id)

    return consume


def build_handlers(store: GatewayStore, clock: Clock, sessions: SessionRegistry) -> dict[str, Handler]:
    """The handler of each consumed topic."""
    table: dict[str, tuple[type[Message], EventHandler]] = {
        events.INSTANCE_ACTIVATED: (events_pb2.InstanceActivated, handlers.handle_instance_activated),
        events.INSTANCE_DEACTIVATED: (events_pb2.InstanceDeactivated, handlers.handle_instance_deactivated),
        events.JOB_REQUESTED: (events_pb2.JobRequested, handlers.handle_job_requested),
        events.JOB_CANCEL_REQUESTED: (events_pb2.JobCancelRequested, handlers.handle_job_cancel_requested),
        events.RESTORE_REQUESTED: (events_pb2.RestoreRequested, handlers.handle_restore_requested),
        events.RESTORE_CANCEL_REQUESTED: (events_pb2.RestoreCancelRequested, handlers.handle_restore_cancel_requested),
    }
    return {topic: _consumer(mt, fn, store, clock, sessions) for topic, (mt, fn) in table.items()}
