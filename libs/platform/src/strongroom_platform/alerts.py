"""Account alerts (ADR 0037): the ``alert-raised`` event a service publishes when an account must be told.

Producers enqueue it in the transaction that changes their state (``outbox.enqueue(conn,
ALERT_RAISED, instance_id, account_alert(...))``); the scheduler's alert pipeline turns it into an
in-app message and the account's webhook and email deliveries. Platform alerts (dead-lettered
records) are built by ``strongroom_platform.poison``.
"""

from __future__ import annotations

import datetime as dt

from strongroom.events.v1 import events_pb2

from strongroom_platform.events import new_meta

MAX_REASON_BYTES = 4096


def clip(text: str, limit: int = MAX_REASON_BYTES) -> str:
    """``text`` without NUL, at most ``limit`` bytes of UTF-8 (cut on a character boundary)."""
    data = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace")[:limit]
    return data.decode("utf-8", "ignore")


def account_alert(
    kind: events_pb2.AlertKind.ValueType,
    *,
    producer: str,
    now: dt.datetime,
    account_id: str,
    instance_id: str,
    reason: str,
    job_id: str = "",
    instance_name: str = "",
) -> events_pb2.AlertRaised:
    """The ``alert-raised`` event of an account alert (publish it with key ``instance_id``).

    ``reason`` is what the operator reads: what happened and, where known, what to do.
    """
    if not account_id or not instance_id:
        raise ValueError("an account alert names its account and instance")
    return events_pb2.AlertRaised(
        meta=new_meta(producer, now),
        kind=kind,
        source=producer,
        reason=clip(reason),
        account_id=account_id,
        instance_id=instance_id,
        job_id=job_id,
        instance_name=instance_name,
    )
