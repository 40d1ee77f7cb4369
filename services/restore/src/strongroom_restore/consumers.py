"""The restore service's consumer table: topic → ``consume(event type, handler)``; the handler claims the event."""

from __future__ import annotations

from strongroom.events.v1 import events_pb2
from strongroom_platform.consume import consume
from strongroom_platform.eventbus import Handler
from strongroom_platform.events import RESTORE_UPDATED

from strongroom_restore import handlers
from strongroom_restore.ports import RestoreStore

GROUP_ID = "restore"


def record_handlers(repo: RestoreStore) -> dict[str, Handler]:
    """{topic: handler} for the restore service's consumer group."""
    return {
        RESTORE_UPDATED: consume(
            events_pb2.RestoreUpdated, lambda event: handlers.handle_restore_updated(event, repo=repo)
        ),
    }
