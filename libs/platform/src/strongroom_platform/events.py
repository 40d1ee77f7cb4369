"""Topic names, their message types, and helpers to build and decode events.

The registry below is the single place that binds a topic to its protobuf
message; ``proto/topics/*.yaml`` documents producers and consumers and a test
checks that the two agree.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2

from strongroom_platform.eventbus import PoisonRecord

INSTANCE_ACTIVATED = "instance-activated"
INSTANCE_DEACTIVATED = "instance-deactivated"
INSTANCE_SETTINGS_CHANGED = "instance-settings-changed"
AGENT_ENROLLED = "agent-enrolled"
JOB_REQUESTED = "job-requested"
JOB_CANCEL_REQUESTED = "job-cancel-requested"
JOB_UPDATED = "job-updated"
POINT_CREATED = "point-created"
VERSION_EXPIRED = "version-expired"
RESTORE_REQUESTED = "restore-requested"
RESTORE_CANCEL_REQUESTED = "restore-cancel-requested"
RESTORE_UPDATED = "restore-updated"
AUDIT_RECORDED = "audit-recorded"
ALERT_RAISED = "alert-raised"
INSTANCE_RECOVERED = "instance-recovered"
INSTANCE_STATUS_CHANGED = "instance-status-changed"
INSTANCE_REINSTATED = "instance-reinstated"

TOPIC_MESSAGES: dict[str, type[Message]] = {
    INSTANCE_ACTIVATED: events_pb2.InstanceActivated,
    INSTANCE_DEACTIVATED: events_pb2.InstanceDeactivated,
    INSTANCE_SETTINGS_CHANGED: events_pb2.InstanceSettingsChanged,
    AGENT_ENROLLED: events_pb2.AgentEnrolled,
    JOB_REQUESTED: events_pb2.JobRequested,
    JOB_CANCEL_REQUESTED: events_pb2.JobCancelRequested,
    JOB_UPDATED: events_pb2.JobUpdated,
    POINT_CREATED: events_pb2.PointCreated,
    VERSION_EXPIRED: events_pb2.VersionExpired,
    RESTORE_REQUESTED: events_pb2.RestoreRequested,
    RESTORE_CANCEL_REQUESTED: events_pb2.RestoreCancelRequested,
    RESTORE_UPDATED: events_pb2.RestoreUpdated,
    AUDIT_RECORDED: events_pb2.AuditRecorded,
    ALERT_RAISED: events_pb2.AlertRaised,
    INSTANCE_RECOVERED: events_pb2.InstanceRecovered,
    INSTANCE_STATUS_CHANGED: events_pb2.InstanceStatusChanged,
    INSTANCE_REINSTATED: events_pb2.InstanceReinstated,
}


@dataclasses.dataclass(frozen=True, slots=True)
class TopicSpec:
    """How a topic is created: the ``partitions``, ``replication_factor``, ``min_insync_replicas``
    and ``dead_letter_topic`` fields of its ``proto/topics/<topic>.yaml`` (a test checks that the
    two agree).

    Records are keyed by instance id, so the partition count bounds how many workers of one
    consumer group handle a topic at once while each instance's events stay in order (ADR 0050).
    """

    # The production default; ``STRONGROOM_KAFKA_PARTITIONS`` overrides it when topics are created
    # (tests and standalone mode use a small count).
    partitions: int = 12
    # Capped at the cluster's broker count when topics are created (one broker in development).
    replication_factor: int = 3
    # With acks=all, a write succeeds only once this many replicas have it (capped like the factor).
    min_insync_replicas: int = 2
    # None: nothing consumes the topic inside Strongroom, so nothing is dead-lettered from it.
    dead_letter_topic: str | None = None


def _consumed(topic: str) -> TopicSpec:
    return TopicSpec(dead_letter_topic=f"{topic}.dlq")


# Every topic is consumed inside Strongroom (alert-raised by the scheduler's alert pipeline, ADR 0037).
TOPIC_SPECS: dict[str, TopicSpec] = {topic: _consumed(topic) for topic in TOPIC_MESSAGES}


def dead_letter_topic(topic: str) -> str:
    """Where records of ``topic`` that can never be processed go (its registry entry's, else ``<topic>.dlq``)."""
    return topic_spec(topic).dead_letter_topic or f"{topic}.dlq"


def topic_spec(topic: str) -> TopicSpec:
    """The registered spec of ``topic``; an unregistered one (tests) gets 1 partition, 1 replica, ``<topic>.dlq``."""
    return TOPIC_SPECS.get(topic) or TopicSpec(
        partitions=1, replication_factor=1, min_insync_replicas=1, dead_letter_topic=f"{topic}.dlq"
    )


M = TypeVar("M", bound=Message)


def new_meta(producer: str, now: dt.datetime) -> common_pb2.EventMeta:
    """Metadata for a new event: a fresh event id and the producer's time."""
    return common_pb2.EventMeta(event_id=str(uuid.uuid4()), occurred_at=to_timestamp(now), producer=producer)


def to_timestamp(when: dt.datetime) -> Timestamp:
    """A protobuf Timestamp from an aware datetime."""
    if when.tzinfo is None:
        raise ValueError("naive datetime")
    ts = Timestamp()
    ts.FromDatetime(when.astimezone(dt.UTC))
    return ts


def from_timestamp(ts: Timestamp) -> dt.datetime:
    """An aware UTC datetime from a protobuf Timestamp."""
    return ts.ToDatetime(tzinfo=dt.UTC)


def decode(message_type: type[M], value: bytes) -> M:
    """Parse an event; undecodable or id-less bytes are a :class:`PoisonRecord`."""
    message = message_type()
    try:
        message.ParseFromString(value)
    except DecodeError as exc:
        raise PoisonRecord(f"cannot decode {message_type.__name__}: {exc}") from exc
    meta = getattr(message, "meta", None)
    if meta is None or not meta.event_id:
        raise PoisonRecord(f"{message_type.__name__} without meta.event_id")
    return message
