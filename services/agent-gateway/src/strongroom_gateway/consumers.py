"""The gateway's consumer table: topic → ``consume(event type, handler in a claimed transaction)``.

The documented exception to "the handler claims" (ADR 0021): every gateway event handler fits
one transaction and returns the effect on agent sessions, so the claim lives here, once, in
``claimed`` — open a transaction, claim the event, call the handler with ``tx`` — and the
effect (wake or disconnect a session) is applied after commit: here, to this process's session,
and by ``NOTIFY`` (sent in the transaction) to the session wherever it is (``session_events``,
ADR 0050).

The records a partition worker holds share that transaction (``consume_batch``): each event is
claimed and handled in order, the effects are notified in one statement, and one commit applies
them all. Job requests (backup and restore), the burst a scheduling pass makes, go further
(``queued``): the batch's claims, its instances' locked read and its job inserts are one statement
each. If any event fails, the transaction rolls back and the consumer runs the events one at a
time, each in its own transaction (a poison event is dead-lettered alone).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

from google.protobuf.message import Message
from strongroom.events.v1 import events_pb2
from strongroom_platform import events
from strongroom_platform.clock import Clock
from strongroom_platform.consume import consume_batch
from strongroom_platform.eventbus import Handler

from strongroom_gateway import handlers, session_events
from strongroom_gateway.agents import REVOKED_BY_CANCEL
from strongroom_gateway.handlers import CONSUMER, NewJob, SessionEffect
from strongroom_gateway.ports import GatewayStore, GatewayTx
from strongroom_gateway.sessions import SessionRegistry

GROUP_ID = "agent-gateway"

E = TypeVar("E", bound=Message)
E_contra = TypeVar("E_contra", bound=Message, contravariant=True)


class EventHandler(Protocol[E_contra]):
    """The shape of every handler in ``handlers``: the event, the claimed transaction, the clock."""

    def __call__(self, event: E_contra, /, *, tx: GatewayTx, clock: Clock) -> Awaitable[SessionEffect | None]: ...


def record_handlers(store: GatewayStore, clock: Clock, sessions: SessionRegistry) -> dict[str, Handler]:
    """{topic: handler} for the gateway's consumer group."""

    def apply(effects: list[SessionEffect]) -> None:
        for effect in effects:
            if effect.disconnect:
                sessions.disconnect(effect.instance_id, REVOKED_BY_CANCEL)
            else:
                sessions.wake(effect.instance_id)

    async def notify(tx: GatewayTx, effects: list[SessionEffect]) -> None:
        if effects:
            # The other gateway processes learn them on commit (their agents' sessions).
            await tx.notify_sessions(session_events.payloads(sessions.origin, effects))

    def claimed(message_type: type[E], handler: EventHandler[E]) -> Handler:
        async def handle(events: Iterable[E]) -> None:
            tx: GatewayTx
            effects: list[SessionEffect] = []
            async with store.transaction() as tx:
                for event in events:
                    # decode() has checked that the event has meta.event_id.
                    if not await tx.claim_event(CONSUMER, getattr(event, "meta").event_id):  # noqa: B009
                        continue
                    effect = await handler(event, tx=tx, clock=clock)
                    if effect is not None:
                        effects.append(effect)
                await notify(tx, effects)
            apply(effects)

        return consume_batch(message_type, handle)

    def queued(message_type: type[E], new_job: Callable[[E], NewJob]) -> Handler:
        async def handle(events: Iterable[E]) -> None:
            # Checked and built first, each while its record's span is current (the traceparent).
            jobs = [(getattr(event, "meta").event_id, new_job(event)) for event in events]  # noqa: B009
            tx: GatewayTx
            async with store.transaction() as tx:
                fresh = await tx.claim_events(CONSUMER, [event_id for event_id, _ in jobs])
                claimed_jobs = []
                for event_id, job in jobs:
                    if event_id in fresh:
                        fresh.discard(event_id)  # an event given twice is handled once
                        claimed_jobs.append(job)
                effects = await handlers.queue_jobs(claimed_jobs, tx=tx, clock=clock)
                await notify(tx, effects)
            apply(effects)

        return consume_batch(message_type, handle)

    return {
        events.INSTANCE_ACTIVATED: claimed(events_pb2.InstanceActivated, handlers.handle_instance_activated),
        events.INSTANCE_DEACTIVATED: claimed(events_pb2.InstanceDeactivated, handlers.handle_instance_deactivated),
        events.JOB_REQUESTED: queued(events_pb2.JobRequested, handlers.job_requested),
        events.JOB_CANCEL_REQUESTED: claimed(events_pb2.JobCancelRequested, handlers.handle_job_cancel_requested),
        events.RESTORE_REQUESTED: queued(events_pb2.RestoreRequested, handlers.restore_requested),
        events.VERSION_EXPIRED: claimed(events_pb2.VersionExpired, handlers.handle_version_expired),
        events.RESTORE_CANCEL_REQUESTED: claimed(
            events_pb2.RestoreCancelRequested, handlers.handle_restore_cancel_requested
        ),
    }
