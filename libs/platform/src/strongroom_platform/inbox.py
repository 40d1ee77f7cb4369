"""Idempotent consumption: remember processed event ids in the handler's transaction.

A consumer handler opens a transaction, calls :func:`claim_event`, and only
performs its writes when the claim succeeds. The claim row commits (or rolls
back) together with those writes, so an event redelivered after a crash is
either fully applied once or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

INBOX_DDL = """
CREATE TABLE IF NOT EXISTS processed_events (
    consumer text NOT NULL,
    event_id text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
"""
# What a service's role needs on its processed events (ADR 0031): claims are only ever added.
INBOX_PRIVILEGES = "SELECT, INSERT"


async def claim_event(conn: asyncpg.Connection, consumer: str, event_id: str) -> bool:
    """Record that ``consumer`` processes ``event_id``; False if it already did.

    Must be called inside the transaction that applies the event's effects.
    """
    if not event_id:
        raise ValueError("event without an event_id cannot be processed idempotently")
    row = await conn.fetchrow(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        event_id,
    )
    return row is not None


async def claim_events(conn: asyncpg.Connection, consumer: str, event_ids: Sequence[str]) -> set[str]:
    """:func:`claim_event` for many events in one statement; the ids newly claimed (an id given twice
    is claimed once). Must be called inside the transaction that applies the events' effects."""
    if not all(event_ids):
        raise ValueError("event without an event_id cannot be processed idempotently")
    rows = await conn.fetch(
        "INSERT INTO processed_events (consumer, event_id) SELECT $1, e FROM unnest($2::text[]) AS e"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        list(event_ids),
    )
    return {row["event_id"] for row in rows}
