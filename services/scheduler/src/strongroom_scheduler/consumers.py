"""Kafka handlers of the scheduler: decode the record, then call the handler (which claims the event)."""

from __future__ import annotations

from collections.abc import Mapping

from strongroom.events.v1 import events_pb2
from strongroom_platform.eventbus import Handler, Record
from strongroom_platform.events import AGENT_ENROLLED, JOB_UPDATED, decode

from strongroom_scheduler import handlers
from strongroom_scheduler.handlers import Deps

GROUP_ID = "scheduler"


def record_handlers(deps: Deps) -> Mapping[str, Handler]:
    """{topic: handler} for the scheduler's consumer group."""

    async def on_agent_enrolled(record: Record) -> None:
        await handlers.handle_agent_enrolled(decode(events_pb2.AgentEnrolled, record.value), deps)

    async def on_job_updated(record: Record) -> None:
        await handlers.handle_job_updated(decode(events_pb2.JobUpdated, record.value), deps)

    return {AGENT_ENROLLED: on_agent_enrolled, JOB_UPDATED: on_job_updated}
