"""Subscriptions, in-app messages and deliveries of the alert pipeline, and the text of each alert kind."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from strongroom.alerts.v1 import alerts_pb2
from strongroom.events.v1 import events_pb2

WEBHOOK = alerts_pb2.CHANNEL_WEBHOOK
EMAIL = alerts_pb2.CHANNEL_EMAIL
CHANNELS = frozenset({WEBHOOK, EMAIL})

PENDING = alerts_pb2.DELIVERY_STATE_PENDING
DELIVERED = alerts_pb2.DELIVERY_STATE_DELIVERED
DEAD = alerts_pb2.DELIVERY_STATE_DEAD

POISON = events_pb2.ALERT_KIND_POISON_RECORD
DATA_KEY_MISSING = events_pb2.ALERT_KIND_DATA_KEY_MISSING
# Alert kinds about the platform, for its operators (``STRONGROOM_ALERT_OPERATOR_ACCOUNT``).
PLATFORM_KINDS: frozenset[int] = frozenset({POISON, DATA_KEY_MISSING})
# Alert kinds about one instance of one account (the producers set account_id and instance_id).
ACCOUNT_KINDS: frozenset[int] = frozenset(
    {
        events_pb2.ALERT_KIND_BACKUP_FAILED,
        events_pb2.ALERT_KIND_BACKUP_PARTIAL,
        events_pb2.ALERT_KIND_BACKUP_SKIPPED,
        events_pb2.ALERT_KIND_RESTORE_FAILED,
        events_pb2.ALERT_KIND_PREPARATION_FAILED,
        events_pb2.ALERT_KIND_INSTANCE_STOPPED,
        events_pb2.ALERT_KIND_CAPACITY_MISMATCH,
    }
)
KNOWN_KINDS: frozenset[int] = ACCOUNT_KINDS | PLATFORM_KINDS

_TITLES: dict[int, str] = {
    events_pb2.ALERT_KIND_BACKUP_FAILED: "Backup failed",
    events_pb2.ALERT_KIND_BACKUP_PARTIAL: "Backup partially completed",
    events_pb2.ALERT_KIND_BACKUP_SKIPPED: "Backup skipped",
    events_pb2.ALERT_KIND_RESTORE_FAILED: "Restore failed",
    events_pb2.ALERT_KIND_PREPARATION_FAILED: "Backup client installation failed",
    events_pb2.ALERT_KIND_INSTANCE_STOPPED: "Instance stopped",
    events_pb2.ALERT_KIND_CAPACITY_MISMATCH: "Block storage capacity differs from the inventory",
}


def kind_name(kind: int) -> str:
    """``backup_failed`` for ``ALERT_KIND_BACKUP_FAILED`` (the webhook's ``kind`` and the CLI's filter)."""
    try:
        return events_pb2.AlertKind.Name(kind).removeprefix("ALERT_KIND_").lower()  # type: ignore[arg-type]
    except ValueError:
        return f"kind_{kind}"


def kind_from_name(name: str) -> int | None:
    """The alert kind named ``backup_failed`` (or ``ALERT_KIND_BACKUP_FAILED``), None if unknown."""
    upper = name.strip().upper()
    full = upper if upper.startswith("ALERT_KIND_") else f"ALERT_KIND_{upper}"
    try:
        kind = int(events_pb2.AlertKind.Value(full))
    except ValueError:
        return None
    return kind if kind in KNOWN_KINDS else None


@dataclass(frozen=True, slots=True)
class Subscription:
    """Where an account's alerts go. ``kinds`` empty: every kind. ``signing_secret``: webhooks only;
    stored for signing, returned once by CreateSubscription and never listed."""

    subscription_id: str
    account_id: str
    channel: int
    target: str
    kinds: tuple[int, ...]
    signing_secret: str
    created_at: dt.datetime

    def wants(self, kind: int) -> bool:
        return not self.kinds or kind in self.kinds


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """Delivery counters of one subscription, and the last failed attempt's error."""

    delivered: int = 0
    pending: int = 0
    dead: int = 0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    """An in-app message: one per alert and account (``alert_event_id`` unique)."""

    message_id: str
    account_id: str
    alert_event_id: str
    kind: int
    title: str
    body: str
    instance_id: str
    job_id: str
    occurred_at: dt.datetime
    created_at: dt.datetime
    read_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to one subscription's target. ``attempts`` counts the attempts started (claimed)."""

    delivery_id: str
    subscription_id: str
    account_id: str
    message_id: str
    channel: int
    target: str
    state: int
    attempts: int
    next_attempt_at: dt.datetime
    created_at: dt.datetime
    last_error: str = ""
    finished_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A claimed delivery with what its sender needs: the message, and the webhook's secret."""

    delivery: Delivery
    message: Message
    signing_secret: str


def render(event: events_pb2.AlertRaised) -> tuple[str, str]:
    """(title, body) of the in-app message, email and webhook of an alert."""
    if event.kind == POISON:
        title = f"Event dead-lettered by {event.source or 'a consumer'}"
        body = (
            f"A record of topic {event.topic} (partition {event.partition}, offset {event.offset}) could not be "
            f"processed after {event.attempts} attempt(s) and was moved to {event.dead_letter_topic}; its effect "
            f"did not happen. Last error: {event.reason or '(none)'}"
        )
        return title, body
    if event.kind == DATA_KEY_MISSING:
        account = event.record_key.decode("utf-8", "replace")
        return f"Data key missing: account {account}", event.reason or "the gateway refused to mint a new data key"
    name = event.instance_name or event.instance_id
    title = f"{_TITLES.get(event.kind, 'Alert')}: {name}"
    parts = [f"Instance {name} ({event.instance_id})" if event.instance_name else f"Instance {event.instance_id}"]
    if event.job_id:
        what = "restore job" if event.kind == events_pb2.ALERT_KIND_RESTORE_FAILED else "backup job"
        parts.append(f"{what} {event.job_id}")
    body = ", ".join(parts) + f": {event.reason or _TITLES.get(event.kind, 'alert').lower()}"
    return title, body
