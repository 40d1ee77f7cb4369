"""Billing's consumer table: topic → ``consume(event type, handler)``; the handler claims the event.

An event the handler rejects as invalid (``InvalidArgument``) goes to the DLQ (``platform.consume``).
"""

from __future__ import annotations

from strongroom.events.v1 import events_pb2
from strongroom_platform.consume import consume
from strongroom_platform.eventbus import Handler
from strongroom_platform.events import (
    INSTANCE_ACTIVATED,
    INSTANCE_DEACTIVATED,
    INSTANCE_REINSTATED,
    INSTANCE_STATUS_CHANGED,
    POINT_CREATED,
    VERSION_EXPIRED,
)

from strongroom_billing import handlers
from strongroom_billing.ports import BillingStore

GROUP_ID = "billing"


def record_handlers(store: BillingStore) -> dict[str, Handler]:
    """{topic: handler} for the billing consumer group."""
    return {
        INSTANCE_ACTIVATED: consume(
            events_pb2.InstanceActivated, lambda event: handlers.handle_instance_activated(event, store)
        ),
        INSTANCE_DEACTIVATED: consume(
            events_pb2.InstanceDeactivated, lambda event: handlers.handle_instance_deactivated(event, store)
        ),
        POINT_CREATED: consume(events_pb2.PointCreated, lambda event: handlers.handle_point_created(event, store)),
        VERSION_EXPIRED: consume(
            events_pb2.VersionExpired, lambda event: handlers.handle_version_expired(event, store)
        ),
        INSTANCE_STATUS_CHANGED: consume(
            events_pb2.InstanceStatusChanged, lambda event: handlers.handle_instance_status_changed(event, store)
        ),
        INSTANCE_REINSTATED: consume(
            events_pb2.InstanceReinstated, lambda event: handlers.handle_instance_reinstated(event, store)
        ),
    }
