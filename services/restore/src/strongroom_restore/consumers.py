"""The restore service's consumer table: topic → ``consume(event type, handler)``; the handler claims the event."""

from __future__ import annotations

from strongroom.events.v1 import events_pb2
from strongroom_platform.consume import consume
from strongroom_platform.eventbus import Handler
from strongroom_platform.events import INSTANCE_DEACTIVATED, INSTANCE_REINSTATED, RESTORE_UPDATED

from strongroom_restore import handlers
from strongroom_restore.ports import RestoreStore

GROUP_ID = "restore"


def record_handlers(repo: RestoreStore) -> dict[str, Handler]:
    """{topic: handler} for the restore service's consumer group."""
    return {
        RESTORE_UPDATED: consume(
            events_pb2.RestoreUpdated, lambda event: handlers.handle_restore_updated(event, repo=repo)
        ),
        # cancel stops restores of the instance and refuses new ones; reinstatement allows them again
        INSTANCE_DEACTIVATED: consume(
            events_pb2.InstanceDeactivated, lambda event: handlers.handle_instance_deactivated(event, repo=repo)
        ),
        INSTANCE_REINSTATED: consume(
            events_pb2.InstanceReinstated, lambda event: handlers.handle_instance_reinstated(event, repo=repo)
        ),
    }
