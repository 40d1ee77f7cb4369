"""The catalog's consumer table: topic → ``consume(event type, handler)``; the handler claims the event.

``handle_point_created`` indexes a point over many transactions after its claim, so the step
cannot hand it one transaction (ADR 0021).
"""

from __future__ import annotations

from strongroom.events.v1 import events_pb2
from strongroom_platform.consume import consume
from strongroom_platform.eventbus import Handler
from strongroom_platform.events import INSTANCE_DEACTIVATED, INSTANCE_SETTINGS_CHANGED, POINT_CREATED
from strongroom_platform.objectstore import ObjectStore

from strongroom_catalog import handlers, lifecycle
from strongroom_catalog.manifests import ManifestReader
from strongroom_catalog.ports import CatalogStore

GROUP_ID = "catalog"


def record_handlers(repo: CatalogStore, store: ObjectStore | ManifestReader) -> dict[str, Handler]:
    """{topic: handler} for the catalog's consumer group."""
    return {
        POINT_CREATED: consume(
            events_pb2.PointCreated, lambda event: handlers.handle_point_created(event, repo=repo, store=store)
        ),
        INSTANCE_SETTINGS_CHANGED: consume(
            events_pb2.InstanceSettingsChanged,
            lambda event: handlers.handle_instance_settings_changed(event, repo=repo),
        ),
        INSTANCE_DEACTIVATED: consume(
            events_pb2.InstanceDeactivated, lambda event: lifecycle.handle_instance_deactivated(event, repo=repo)
        ),
    }
