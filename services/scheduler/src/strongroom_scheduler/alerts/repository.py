"""PostgreSQL adapter of ``AlertStore`` (tables ``alert_*`` of schema ``scheduler``, see ``migrations``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

import asyncpg
from strongroom_platform import db
from strongroom_platform.db import PgTransaction

from strongroom_scheduler.alerts.model import PENDING, Delivery, Message, Outgoing, Subscription, SubscriptionStats

_SUBSCRIPTION = "subscription_id, account_id, channel, target, kinds, signing_secret, created_at"
_MESSAGE = (
    "message_id, account_id, alert_event_id, kind, title, body, instance_id, job_id, occurred_at, created_at, read_at"
)
_DELIVERY = (
    "delivery_id, subscription_id, account_id, message_id, channel, target, state, attempts, next_attempt_at,"
    " created_at, last_error, finished_at"
)


def _subscription(row: asyncpg.Record) -> Subscription:
    values = dict(row)
    values["kinds"] = tuple(values["kinds"])
    return Subscription(**values)


def _message(row: asyncpg.Record, prefix: str = "") -> Message:
    names = _MESSAGE.split(", ")
    return Message(**{name: row[prefix + name] for name in names})


def _delivery(row: asyncpg.Record) -> Delivery:
    return Delivery(**{name.strip(): row[name.strip()] for name in _DELIVERY.split(",")})


class PgAlertTx(PgTransaction):
    async def insert_subscription(self, subscription: Subscription) -> None:
        await self._conn.execute(
            f"INSERT INTO alert_subscriptions ({_SUBSCRIPTION}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            subscription.subscription_id,
            subscription.account_id,
            subscription.channel,
            subscription.target,
            list(subscription.kinds),
            subscription.signing_secret,
            subscription.created_at,
        )

    async def list_subscriptions(
        self, account_id: str, *, after: tuple[dt.datetime, str] | None = None, limit: int | None = None
    ) -> list[Subscription]:
        after_time, after_id = after if after is not None else (None, "")
        rows = await self._conn.fetch(
            f"SELECT {_SUBSCRIPTION} FROM alert_subscriptions WHERE account_id = $1"
            " AND ($2::timestamptz IS NULL OR (created_at, subscription_id) > ($2, $3))"
            " ORDER BY created_at, subscription_id LIMIT $4",
            account_id,
            after_time,
            after_id,
            limit,
        )
        return [_subscription(r) for r in rows]

    async def get_subscription(self, subscription_id: str) -> Subscription | None:
        row = await self._conn.fetchrow(
            f"SELECT {_SUBSCRIPTION} FROM alert_subscriptions WHERE subscription_id = $1", subscription_id
        )
        return _subscription(row) if row is not None else None

    async def delete_subscription(self, subscription_id: str) -> None:
        await self._conn.execute("DELETE FROM alert_subscriptions WHERE subscription_id = $1", subscription_id)

    async def subscription_stats(self, subscription_ids: Sequence[str]) -> dict[str, SubscriptionStats]:
        rows = await self._conn.fetch(
            "SELECT subscription_id,"
            " count(*) FILTER (WHERE state = 2) AS delivered,"
            " count(*) FILTER (WHERE state = 1) AS pending,"
            " count(*) FILTER (WHERE state = 3) AS dead,"
            " (array_agg(last_error ORDER BY created_at DESC) FILTER (WHERE last_error <> '' AND state <> 2))[1]"
            " AS last_error"
            " FROM alert_deliveries WHERE subscription_id = ANY($1::text[]) GROUP BY subscription_id",
            list(subscription_ids),
        )
        return {
            r["subscription_id"]: SubscriptionStats(
                delivered=r["delivered"], pending=r["pending"], dead=r["dead"], last_error=r["last_error"] or ""
            )
            for r in rows
        }

    async def insert_message(self, message: Message) -> bool:
        result = await self._conn.execute(
            f"INSERT INTO alert_messages ({_MESSAGE}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            " ON CONFLICT (account_id, alert_event_id) DO NOTHING",
            message.message_id,
            message.account_id,
            message.alert_event_id,
            message.kind,
            message.title,
            message.body,
            message.instance_id,
            message.job_id,
            message.occurred_at,
            message.created_at,
            message.read_at,
        )
        return bool(result == "INSERT 0 1")

    async def list_messages(
        self, account_id: str, *, unread_only: bool, after: tuple[dt.datetime, str] | None, limit: int
    ) -> list[Message]:
        after_time, after_id = after if after is not None else (None, "")
        rows = await self._conn.fetch(
            f"SELECT {_MESSAGE} FROM alert_messages WHERE account_id = $1 AND (NOT $2 OR read_at IS NULL)"
            " AND ($3::timestamptz IS NULL OR (created_at, message_id) < ($3, $4))"
            " ORDER BY created_at DESC, message_id DESC LIMIT $5",
            account_id,
            unread_only,
            after_time,
            after_id,
            limit,
        )
        return [_message(r) for r in rows]

    async def count_unread(self, account_id: str) -> int:
        count = await self._conn.fetchval(
            "SELECT count(*) FROM alert_messages WHERE account_id = $1 AND read_at IS NULL", account_id
        )
        return int(count)

    async def mark_read(self, account_id: str, message_ids: Sequence[str] | None, now: dt.datetime) -> int:
        result = await self._conn.execute(
            "UPDATE alert_messages SET read_at = $3 WHERE account_id = $1 AND read_at IS NULL"
            " AND ($2::text[] IS NULL OR message_id = ANY($2::text[]))",
            account_id,
            None if message_ids is None else list(message_ids),
            now,
        )
        return int(result.rsplit(" ", 1)[-1])

    async def insert_delivery(self, delivery: Delivery) -> None:
        await self._conn.execute(
            f"INSERT INTO alert_deliveries ({_DELIVERY}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            delivery.delivery_id,
            delivery.subscription_id,
            delivery.account_id,
            delivery.message_id,
            delivery.channel,
            delivery.target,
            delivery.state,
            delivery.attempts,
            delivery.next_attempt_at,
            delivery.created_at,
            delivery.last_error,
            delivery.finished_at,
        )

    async def list_deliveries(
        self, account_id: str, state: int | None, limit: int, after: tuple[dt.datetime, str] | None = None
    ) -> list[Delivery]:
        after_time, after_id = after if after is not None else (None, "")
        rows = await self._conn.fetch(
            f"SELECT {_DELIVERY} FROM alert_deliveries WHERE account_id = $1 AND ($2::smallint IS NULL OR state = $2)"
            " AND ($4::timestamptz IS NULL OR (created_at, delivery_id) < ($4, $5))"
            " ORDER BY created_at DESC, delivery_id DESC LIMIT $3",
            account_id,
            state,
            limit,
            after_time,
            after_id,
        )
        return [_delivery(r) for r in rows]

    async def claim_due(self, now: dt.datetime, lease_until: dt.datetime, limit: int) -> list[Outgoing]:
        claimed = await self._conn.fetch(
            "WITH due AS (SELECT delivery_id FROM alert_deliveries WHERE state = $1 AND next_attempt_at <= $2"
            " ORDER BY next_attempt_at, delivery_id LIMIT $4 FOR UPDATE SKIP LOCKED)"
            " UPDATE alert_deliveries d SET attempts = d.attempts + 1, next_attempt_at = $3"
            " FROM due WHERE d.delivery_id = due.delivery_id RETURNING d.delivery_id",
            PENDING,
            now,
            lease_until,
            limit,
        )
        if not claimed:
            return []
        message_columns = ", ".join(f"m.{c} AS m_{c}" for c in _MESSAGE.split(", "))
        delivery_columns = ", ".join(f"d.{c.strip()}" for c in _DELIVERY.split(","))
        rows = await self._conn.fetch(
            f"SELECT {delivery_columns}, {message_columns}, s.signing_secret FROM alert_deliveries d"
            " JOIN alert_messages m ON m.message_id = d.message_id"
            " JOIN alert_subscriptions s ON s.subscription_id = d.subscription_id"
            " WHERE d.delivery_id = ANY($1::text[]) ORDER BY d.next_attempt_at, d.delivery_id",
            [r["delivery_id"] for r in claimed],
        )
        return [
            Outgoing(delivery=_delivery(r), message=_message(r, "m_"), signing_secret=r["signing_secret"]) for r in rows
        ]

    async def finish_delivery(
        self, delivery_id: str, *, state: int, next_attempt_at: dt.datetime, error: str, now: dt.datetime
    ) -> None:
        await self._conn.execute(
            "UPDATE alert_deliveries SET state = $2::smallint, next_attempt_at = $3,"
            " last_error = CASE WHEN $4::text = '' THEN last_error ELSE $4::text END,"
            " finished_at = CASE WHEN $2::smallint = $6::smallint THEN NULL ELSE $5::timestamptz END"
            " WHERE delivery_id = $1",
            delivery_id,
            state,
            next_attempt_at,
            error,
            now,
            PENDING,
        )

    async def prune_deliveries(self, before: dt.datetime, limit: int) -> int:
        rows = await self._conn.fetch(
            "WITH old AS (SELECT delivery_id FROM alert_deliveries WHERE state <> $1 AND finished_at < $2"
            " ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
            " DELETE FROM alert_deliveries d USING old WHERE d.delivery_id = old.delivery_id RETURNING 1",
            PENDING,
            before,
            limit,
        )
        return len(rows)

    async def prune_messages(self, before: dt.datetime, limit: int) -> int:
        rows = await self._conn.fetch(
            "WITH old AS (SELECT m.message_id FROM alert_messages m WHERE m.read_at < $1"
            " AND NOT EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.message_id = m.message_id)"
            " ORDER BY m.read_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " DELETE FROM alert_messages m USING old WHERE m.message_id = old.message_id RETURNING 1",
            before,
            limit,
        )
        return len(rows)


class PgAlertStore:
    """AlertStore over a pool bound to the ``scheduler`` schema."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def transaction(self) -> AbstractAsyncContextManager[PgAlertTx]:
        return db.transaction(self._pool, PgAlertTx)
