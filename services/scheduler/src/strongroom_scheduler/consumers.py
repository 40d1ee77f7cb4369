"""The scheduler's consumer table: topic → ``consume(event type, handler)``; the handler claims the event."""

from __future__ import annotations

from strongroom.events.v1 import events_pb2
from strongroom_platform.consume import consume
from strongroom_platform.eventbus import Handler
from strongroom_platform.events import (
    AGENT_ENROLLED,
    ALERT_RAISED,
    AUDIT_RECORDED,
    INSTANCE_RECOVERED,
    INSTANCE_REINSTATED,
    JOB_UPDATED,
)

from strongroom_scheduler import handlers
from strongroom_scheduler.alerts import handlers as alert_handlers
from strongroom_scheduler.alerts.handlers import AlertDeps
from strongroom_scheduler.handlers import Deps

GROUP_ID = "scheduler"


def record_handlers(deps: Deps, alert_deps: AlertDeps) -> dict[str, Handler]:
    """{topic: handler} for the scheduler's consumer group."""
    return {
        AGENT_ENROLLED: consume(events_pb2.AgentEnrolled, lambda event: handlers.handle_agent_enrolled(event, deps)),
        JOB_UPDATED: consume(events_pb2.JobUpdated, lambda event: handlers.handle_job_updated(event, deps)),
        AUDIT_RECORDED: consume(events_pb2.AuditRecorded, lambda event: handlers.handle_audit_recorded(event, deps)),
        ALERT_RAISED: consume(
            events_pb2.AlertRaised, lambda event: alert_handlers.handle_alert_raised(event, alert_deps)
        ),
        INSTANCE_RECOVERED: consume(
            events_pb2.InstanceRecovered, lambda event: handlers.handle_instance_recovered(event, deps)
        ),
        INSTANCE_REINSTATED: consume(
            events_pb2.InstanceReinstated, lambda event: handlers.handle_instance_reinstated(event, deps)
        ),
    }
