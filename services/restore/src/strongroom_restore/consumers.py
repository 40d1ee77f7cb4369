"""Kafka consumers of the restore service: thin wrappers that decode and call a handler."""

from __future__ import annotations

from strongroom.events.v1 import events_pb2
from strongroom_platform.eventbus import Handler, Record
from strongroom_platform.events import RESTORE_UPDATED, decode

from strongroom_restore.handlers import handle_restore_updated
from strongroom_restore.ports import RestoreStore

GROUP_ID = "restore"


def handlers(repo: RestoreStore) -> dict[str, Handler]:
    """{topic: handler} for the restore service's consumer group."""

    async def on_restore_updated(record: Record) -> None:
        await handle_restore_updated(decode(events_pb2.RestoreUpdated, record.value), repo=repo)

    return {RESTORE_UPDATED: on_restore_updated}
