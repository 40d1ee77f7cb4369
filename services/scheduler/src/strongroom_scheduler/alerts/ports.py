"""Ports of the alert pipeline; adapters in ``alerts.repository`` (PostgreSQL), ``alerts.webhook``,
``alerts.mail`` and ``alerts.testing`` (fakes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from strongroom_platform.db import InboxTx

from strongroom_scheduler.alerts.model import Delivery, Message, Outgoing, Subscription, SubscriptionStats


class AlertTx(InboxTx, Protocol):
    """One transaction over the alert tables (schema ``scheduler``)."""

    async def insert_subscription(self, subscription: Subscription) -> None: ...

    async def list_subscriptions(
        self, account_id: str, *, after: tuple[dt.datetime, str] | None = None, limit: int | None = None
    ) -> list[Subscription]:
        """The account's subscriptions, oldest first by (created_at, subscription_id); ``after``:
        strictly newer than that position; at most ``limit`` (None: all)."""
        ...

    async def get_subscription(self, subscription_id: str) -> Subscription | None: ...

    async def delete_subscription(self, subscription_id: str) -> None:
        """Remove it and its deliveries."""
        ...

    async def subscription_stats(self, subscription_ids: Sequence[str]) -> dict[str, SubscriptionStats]: ...

    async def insert_message(self, message: Message) -> bool:
        """Store it; False (and nothing stored) if the account has a message of that alert already."""
        ...

    async def list_messages(
        self, account_id: str, *, unread_only: bool, after: tuple[dt.datetime, str] | None, limit: int
    ) -> list[Message]:
        """Newest first by (created_at, message_id); ``after``: strictly older than that position."""
        ...

    async def count_unread(self, account_id: str) -> int: ...

    async def mark_read(self, account_id: str, message_ids: Sequence[str] | None, now: dt.datetime) -> int:
        """Mark unread messages of the account read (``None``: all of them); return how many."""
        ...

    async def insert_delivery(self, delivery: Delivery) -> None: ...

    async def list_deliveries(
        self, account_id: str, state: int | None, limit: int, after: tuple[dt.datetime, str] | None = None
    ) -> list[Delivery]:
        """Newest first by (created_at, delivery_id); ``after``: strictly older than that position."""
        ...

    async def claim_due(self, now: dt.datetime, lease_until: dt.datetime, limit: int) -> list[Outgoing]:
        """Up to ``limit`` pending deliveries due at ``now`` (rows locked by others are skipped): each
        gets one more attempt counted and ``next_attempt_at = lease_until``, so one whose sender dies
        is taken again once the lease ends."""
        ...

    async def finish_delivery(
        self, delivery_id: str, *, state: int, next_attempt_at: dt.datetime, error: str, now: dt.datetime
    ) -> None:
        """Record an attempt's outcome: DELIVERED or DEAD (finished at ``now``) or PENDING (retry at
        ``next_attempt_at``); ``error`` becomes ``last_error`` unless empty. A deleted delivery is ignored."""
        ...

    async def prune_deliveries(self, before: dt.datetime, limit: int) -> int:
        """Delete up to ``limit`` finished (delivered or dead) deliveries that finished before ``before``;
        return how many."""
        ...

    async def prune_messages(self, before: dt.datetime, limit: int) -> int:
        """Delete up to ``limit`` messages read before ``before`` that no delivery refers to any more;
        return how many (unread messages are kept whatever their age)."""
        ...


class AlertStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[AlertTx]:
        """A transaction that commits when the block exits normally and rolls back on an exception."""
        ...


class Sender(Protocol):
    """Delivers one message over one channel."""

    async def send(self, outgoing: Outgoing) -> None:
        """Deliver it or raise ``DeliveryError`` (or any exception) saying why not."""
        ...


class DeliveryError(Exception):
    """An attempt failed; the message is for the operator (``last_error``)."""
