"""In-memory fakes of the alert pipeline's ports: ``InMemoryAlertStore`` and ``RecordingSender``."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from strongroom_platform.paging import keyset_slice
from strongroom_platform.testing import InMemoryTransactions, claim_once

from strongroom_scheduler.alerts.model import (
    DEAD,
    DELIVERED,
    PENDING,
    Delivery,
    Message,
    Outgoing,
    Subscription,
    SubscriptionStats,
)
from strongroom_scheduler.alerts.ports import DeliveryError


class _State:
    def __init__(self) -> None:
        self.claimed: set[tuple[str, str]] = set()
        self.subscriptions: dict[str, Subscription] = {}
        self.messages: dict[str, Message] = {}
        self.deliveries: dict[str, Delivery] = {}


class InMemoryAlertTx:
    def __init__(self, state: _State) -> None:
        self._s = state

    async def claim_event(self, consumer: str, event_id: str) -> bool:
        return claim_once(self._s.claimed, consumer, event_id)

    async def insert_subscription(self, subscription: Subscription) -> None:
        if subscription.subscription_id in self._s.subscriptions:
            raise ValueError(f"duplicate subscription {subscription.subscription_id}")
        self._s.subscriptions[subscription.subscription_id] = subscription

    async def list_subscriptions(
        self, account_id: str, *, after: tuple[dt.datetime, str] | None = None, limit: int | None = None
    ) -> list[Subscription]:
        mine = (s for s in self._s.subscriptions.values() if s.account_id == account_id)
        return keyset_slice(mine, lambda s: (s.created_at, s.subscription_id), after, limit=limit)

    async def get_subscription(self, subscription_id: str) -> Subscription | None:
        return self._s.subscriptions.get(subscription_id)

    async def delete_subscription(self, subscription_id: str) -> None:
        self._s.subscriptions.pop(subscription_id, None)
        for delivery_id in [d.delivery_id for d in self._s.deliveries.values() if d.subscription_id == subscription_id]:
            del self._s.deliveries[delivery_id]

    async def subscription_stats(self, subscription_ids: Sequence[str]) -> dict[str, SubscriptionStats]:
        stats: dict[str, SubscriptionStats] = {}
        for subscription_id in subscription_ids:
            mine = sorted(
                (d for d in self._s.deliveries.values() if d.subscription_id == subscription_id),
                key=lambda d: d.created_at,
                reverse=True,
            )
            if mine:
                errors = [d.last_error for d in mine if d.last_error and d.state != DELIVERED]
                stats[subscription_id] = SubscriptionStats(
                    delivered=sum(d.state == DELIVERED for d in mine),
                    pending=sum(d.state == PENDING for d in mine),
                    dead=sum(d.state == DEAD for d in mine),
                    last_error=errors[0] if errors else "",
                )
        return stats

    async def insert_message(self, message: Message) -> bool:
        if any(
            m.account_id == message.account_id and m.alert_event_id == message.alert_event_id
            for m in self._s.messages.values()
        ):
            return False
        self._s.messages[message.message_id] = message
        return True

    async def list_messages(
        self, account_id: str, *, unread_only: bool, after: tuple[dt.datetime, str] | None, limit: int
    ) -> list[Message]:
        found = [
            m
            for m in self._s.messages.values()
            if m.account_id == account_id
            and (not unread_only or m.read_at is None)
            and (after is None or (m.created_at, m.message_id) < after)
        ]
        return sorted(found, key=lambda m: (m.created_at, m.message_id), reverse=True)[:limit]

    async def count_unread(self, account_id: str) -> int:
        return sum(m.account_id == account_id and m.read_at is None for m in self._s.messages.values())

    async def mark_read(self, account_id: str, message_ids: Sequence[str] | None, now: dt.datetime) -> int:
        marked = 0
        for m in list(self._s.messages.values()):
            if (
                m.account_id == account_id
                and m.read_at is None
                and (message_ids is None or m.message_id in message_ids)
            ):
                self._s.messages[m.message_id] = dataclasses.replace(m, read_at=now)
                marked += 1
        return marked

    async def insert_delivery(self, delivery: Delivery) -> None:
        if delivery.subscription_id not in self._s.subscriptions or delivery.message_id not in self._s.messages:
            raise ValueError("delivery of an unknown subscription or message")  # the foreign keys
        self._s.deliveries[delivery.delivery_id] = delivery

    async def list_deliveries(
        self, account_id: str, state: int | None, limit: int, after: tuple[dt.datetime, str] | None = None
    ) -> list[Delivery]:
        found = (
            d for d in self._s.deliveries.values() if d.account_id == account_id and (state is None or d.state == state)
        )
        return keyset_slice(found, lambda d: (d.created_at, d.delivery_id), after, descending=True, limit=limit)

    async def claim_due(self, now: dt.datetime, lease_until: dt.datetime, limit: int) -> list[Outgoing]:
        due = sorted(
            (d for d in self._s.deliveries.values() if d.state == PENDING and d.next_attempt_at <= now),
            key=lambda d: (d.next_attempt_at, d.delivery_id),
        )[:limit]
        claimed = []
        for d in due:
            updated = dataclasses.replace(d, attempts=d.attempts + 1, next_attempt_at=lease_until)
            self._s.deliveries[d.delivery_id] = updated
            secret = self._s.subscriptions[d.subscription_id].signing_secret
            claimed.append(Outgoing(delivery=updated, message=self._s.messages[d.message_id], signing_secret=secret))
        return claimed

    async def finish_delivery(
        self, delivery_id: str, *, state: int, next_attempt_at: dt.datetime, error: str, now: dt.datetime
    ) -> None:
        d = self._s.deliveries.get(delivery_id)
        if d is None:
            return
        self._s.deliveries[delivery_id] = dataclasses.replace(
            d,
            state=state,
            next_attempt_at=next_attempt_at,
            last_error=error or d.last_error,
            finished_at=None if state == PENDING else now,
        )

    async def prune_deliveries(self, before: dt.datetime, limit: int) -> int:
        old = sorted(
            (
                d
                for d in self._s.deliveries.values()
                if d.state != PENDING and d.finished_at is not None and d.finished_at < before
            ),
            key=lambda d: (d.finished_at, d.delivery_id),
        )[:limit]
        for d in old:
            del self._s.deliveries[d.delivery_id]
        return len(old)

    async def prune_messages(self, before: dt.datetime, limit: int) -> int:
        referenced = {d.message_id for d in self._s.deliveries.values()}
        old = sorted(
            (
                m
                for m in self._s.messages.values()
                if m.read_at is not None and m.read_at < before and m.message_id not in referenced
            ),
            key=lambda m: (m.read_at, m.message_id),
        )[:limit]
        for m in old:
            del self._s.messages[m.message_id]
        return len(old)


class InMemoryAlertStore(InMemoryTransactions[_State]):
    """AlertStore fake; ``messages`` and ``deliveries`` expose the committed rows."""

    def __init__(self) -> None:
        super().__init__(_State())

    @property
    def messages(self) -> list[Message]:
        return sorted(self._state.messages.values(), key=lambda m: (m.created_at, m.message_id))

    @property
    def deliveries(self) -> list[Delivery]:
        return sorted(self._state.deliveries.values(), key=lambda d: (d.created_at, d.delivery_id))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryAlertTx]:
        async with self._transaction_state() as state:
            yield InMemoryAlertTx(state)


class RecordingSender:
    """Sender fake: records what it was given; fails with ``failures.pop(0)`` while any are left."""

    def __init__(self, failures: Sequence[str] = ()) -> None:
        self.sent: list[Outgoing] = []
        self.failures = list(failures)

    async def send(self, outgoing: Outgoing) -> None:
        if self.failures:
            raise DeliveryError(self.failures.pop(0))
        self.sent.append(outgoing)
