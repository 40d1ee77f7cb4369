"""Kafka consumers of the catalog: thin wrappers that decode and call a handler."""

from __future__ import annotations

from strongroom.events.v1 import events_pb2
from strongroom_platform.eventbus import Handler, Record
from strongroom_platform.events import INSTANCE_SETTINGS_CHANGED, POINT_CREATED, decode
from strongroom_platform.objectstore import ObjectStore

from strongroom_catalog.handlers import handle_instance_settings_changed, handle_point_created
from strongroom_catalog.manifests import ManifestReader
from strongroom_catalog.ports import CatalogStore

GROUP_ID = "catalog"


def handlers(repo: CatalogStore, store: ObjectStore | ManifestReader) -> dict[str, Handler]:
    """{topic: handler} for the catalog's consumer group."""

    async def on_point_created(record: Record) -> None:
        event = decode(events_pb2.PointCreated, record.value)
        await handle_point_created(event, repo=repo, store=store)

    async def on_instance_settings_changed(record: Record) -> None:
        event = decode(events_pb2.InstanceSettingsChanged, record.value)
        await handle_instance_settings_changed(event, repo=repo)

    return {POINT_CREATED: on_point_created, INSTANCE_SETTINGS_CHANGED: on_instance_settings_changed}
