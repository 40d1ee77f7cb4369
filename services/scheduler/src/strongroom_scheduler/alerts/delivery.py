"""The delivery worker: drains pending webhook and email deliveries from the durable queue table.

A delivery is claimed in one short transaction (its attempt counted, its ``next_attempt_at``
moved to the end of a lease), sent outside any transaction, and its outcome recorded in another.
A process that dies mid-send leaves the row pending: it is taken again when the lease ends, so a
delivery is made at least once (receivers deduplicate by ``Strongroom-Delivery``). Failed attempts
are retried with exponential backoff capped at ``maximum``; after ``max_attempts`` the delivery is
dead-lettered and the account gets an in-app message saying so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Mapping

from strongroom.events.v1 import events_pb2
from strongroom_platform.alerts import clip
from strongroom_platform.clock import Clock, sleep_or_event

from strongroom_scheduler.alerts import webhook
from strongroom_scheduler.alerts.model import DEAD, DELIVERED, PENDING, WEBHOOK, Message, Outgoing
from strongroom_scheduler.alerts.ports import AlertStore, DeliveryError, Sender

log = logging.getLogger(__name__)

MAX_ERROR_BYTES = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """Backoff from ``initial`` doubling to ``maximum`` seconds; dead after ``max_attempts``;
    ``lease``: seconds a claimed delivery is left to its sender before it is taken again."""

    initial: float = 10.0
    maximum: float = 3600.0
    max_attempts: int = 8
    lease: float = 120.0
    batch: int = 20
    concurrency: int = 8

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial <= 0 or self.maximum < self.initial or self.batch < 1:
            raise ValueError("max_attempts >= 1, batch >= 1 and 0 < initial <= maximum")

    def backoff(self, attempts: int) -> dt.timedelta:
        """The wait after the ``attempts``-th failed attempt."""
        return dt.timedelta(seconds=min(self.initial * 2 ** max(attempts - 1, 0), self.maximum))


def _channel_name(outgoing: Outgoing) -> str:
    if outgoing.delivery.channel == WEBHOOK:
        return f"webhook {webhook.display_target(outgoing.delivery.target)}"
    return f"email to {outgoing.delivery.target}"


async def _attempt(senders: Mapping[int, Sender], outgoing: Outgoing) -> str:
    """ "" when delivered, else why not."""
    sender = senders.get(outgoing.delivery.channel)
    if sender is None:
        return "this channel is not configured on the scheduler (no SMTP relay?)"
    try:
        await sender.send(outgoing)
    except DeliveryError as exc:
        return clip(str(exc), MAX_ERROR_BYTES) or "delivery failed"
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("delivery %s: sender failed", outgoing.delivery.delivery_id)
        return clip(f"{type(exc).__name__}: {exc}", MAX_ERROR_BYTES)
    return ""


async def _record(store: AlertStore, clock: Clock, policy: DeliveryPolicy, outgoing: Outgoing, error: str) -> None:
    delivery = outgoing.delivery
    now = clock.now()
    async with store.transaction() as tx:
        if not error:
            await tx.finish_delivery(delivery.delivery_id, state=DELIVERED, next_attempt_at=now, error="", now=now)
            return
        if delivery.attempts < policy.max_attempts:
            retry_at = now + policy.backoff(delivery.attempts)
            await tx.finish_delivery(
                delivery.delivery_id, state=PENDING, next_attempt_at=retry_at, error=error, now=now
            )
            log.warning(
                "delivery %s (%s), attempt %d of %d failed, retry at %s: %s",
                delivery.delivery_id,
                _channel_name(outgoing),
                delivery.attempts,
                policy.max_attempts,
                retry_at.isoformat(),
                error,
            )
            return
        await tx.finish_delivery(delivery.delivery_id, state=DEAD, next_attempt_at=now, error=error, now=now)
        title = f"Alert delivery given up: {_channel_name(outgoing)}"
        notice = Message(
            message_id=str(uuid.uuid4()),
            account_id=delivery.account_id,
            alert_event_id=f"delivery-dead:{delivery.delivery_id}",
            kind=events_pb2.ALERT_KIND_DELIVERY_FAILED,
            title=title,
            body=(
                f'"{outgoing.message.title}" could not be delivered by {_channel_name(outgoing)} after '
                f"{delivery.attempts} attempts (subscription {delivery.subscription_id}, delivery "
                f"{delivery.delivery_id}). Last error: {error}"
            ),
            instance_id=outgoing.message.instance_id,
            job_id=outgoing.message.job_id,
            occurred_at=now,
            created_at=now,
        )
        await tx.insert_message(notice)
    log.error(
        "delivery %s (%s) dead-lettered after %d attempts: %s",
        delivery.delivery_id,
        _channel_name(outgoing),
        delivery.attempts,
        error,
    )


async def deliver_due(store: AlertStore, senders: Mapping[int, Sender], clock: Clock, policy: DeliveryPolicy) -> int:
    """Claim up to ``policy.batch`` due deliveries, attempt them (``policy.concurrency`` at a time)
    and record the outcomes; return how many were claimed."""
    now = clock.now()
    async with store.transaction() as tx:
        due = await tx.claim_due(now, now + dt.timedelta(seconds=policy.lease), policy.batch)
    if not due:
        return 0
    limit = asyncio.Semaphore(policy.concurrency)

    async def one(outgoing: Outgoing) -> None:
        async with limit:
            error = await _attempt(senders, outgoing)
        await _record(store, clock, policy, outgoing, error)

    await asyncio.gather(*(one(o) for o in due))
    return len(due)


async def run_delivery_loop(
    store: AlertStore,
    senders: Mapping[int, Sender],
    clock: Clock,
    policy: DeliveryPolicy,
    wake: asyncio.Event,
    *,
    interval: float = 2.0,
) -> None:
    """Deliver until cancelled: drain what is due, then wait ``interval`` seconds of ``clock`` or
    until ``wake`` is set (new deliveries queued by this process). Failures are logged and retried."""
    while True:
        wake.clear()
        try:
            while await deliver_due(store, senders, clock, policy) >= policy.batch:
                pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery pass failed; retrying in %.0fs", interval)
        await sleep_or_event(clock, interval, wake)
