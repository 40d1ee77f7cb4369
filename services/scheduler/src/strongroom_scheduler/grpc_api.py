"""gRPC ``SchedulerService`` and ``AuditService``: validate, call ``handlers``; errors become status
codes in ``grpc_errors``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc
from strongroom.audit.v1 import audit_pb2, audit_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from strongroom_platform.auth import CallAuth, current_call
from strongroom_platform.events import from_timestamp, to_timestamp
from strongroom_platform.zones import zone_name

from strongroom_scheduler import handlers
from strongroom_scheduler.handlers import Deps, SettingsInput
from strongroom_scheduler.inventory import InventoryInput
from strongroom_scheduler.models import BlockDevice, Instance, Job


def instance_to_proto(instance: Instance, now: dt.datetime, zone: dt.tzinfo) -> scheduler_pb2.Instance:
    status = instance.status(now)
    message = scheduler_pb2.Instance(
        instance_id=instance.instance_id,
        account_id=instance.account_id,
        name=instance.name,
        region=instance.region,
        status=status,  # type: ignore[arg-type]
        settings=scheduler_pb2.BackupSettings(
            priority=instance.priority,  # type: ignore[arg-type]
            daily_start_minute=instance.daily_start_minute,
            keep_latest_version=instance.keep_latest_version,
            roots=instance.roots,
        ),
        hostname=instance.hostname,
        last_error=instance.status_error(now),
        activated_at=to_timestamp(instance.activated_at),
        agent_enrolled=instance.enrolled,
        schedule_zone=zone_name(zone),
        inventory=scheduler_pb2.InventoryRecord(
            host_id=instance.host_id,
            name=instance.name,
            region=instance.region,
            os=instance.os,
            block_devices=[
                common_pb2.BlockDevice(device=d.device, size_bytes=d.size_bytes) for d in instance.block_devices
            ],
            released=instance.released,
        ),
        activated=instance.activated,
        agent_version=instance.agent_version,
        etag=instance.etag(now),
    )
    if not instance.activated:
        message.ClearField("activated_at")
    if status not in _UNSCHEDULED:
        message.next_backup_at.CopyFrom(to_timestamp(instance.next_backup_at))
    return message


_UNSCHEDULED = frozenset(
    {
        scheduler_pb2.RUNNING_STATUS_PAUSED,
        scheduler_pb2.RUNNING_STATUS_CANCELED,
        scheduler_pb2.RUNNING_STATUS_NOT_ACTIVATED,
        scheduler_pb2.RUNNING_STATUS_STOPPED,
    }
)


def _inventory_input(record: scheduler_pb2.InventoryRecord) -> InventoryInput:
    return InventoryInput(
        host_id=record.host_id,
        name=record.name,
        region=record.region,
        os=record.os,
        block_devices=[BlockDevice(d.device, d.size_bytes) for d in record.block_devices],
        released=record.released,
    )


def job_to_proto(job: Job) -> scheduler_pb2.BackupJob:
    message = scheduler_pb2.BackupJob(
        job_id=job.job_id,
        instance_id=job.instance_id,
        status=job.status,  # type: ignore[arg-type]
        created_at=to_timestamp(job.created_at),
        error=job.error,
        stats=job.stats,
        version_id=job.version_id,
        priority=job.priority,  # type: ignore[arg-type]
        file_errors=job.file_errors,
    )
    if job.finished_at is not None:
        message.finished_at.CopyFrom(to_timestamp(job.finished_at))
    return message


class InstanceOp(Protocol):
    """``pause_backup``, ``resume_backup``, ``cancel_backup``."""

    def __call__(self, deps: Deps, instance_id: str, *, call: CallAuth, etag: str = "") -> Awaitable[Instance]: ...


def _settings_input(settings: scheduler_pb2.BackupSettings, fields: set[str]) -> SettingsInput:
    return SettingsInput(
        priority=int(settings.priority) if "priority" in fields else None,
        daily_start_minute=settings.daily_start_minute if "daily_start_minute" in fields else None,
        keep_latest_version=settings.keep_latest_version if "keep_latest_version" in fields else None,
        roots=list(settings.roots) if "roots" in fields else None,
    )


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Every method passes the call's ``CallAuth`` (set by the auth interceptor) to its handler."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    def _instance(self, instance: Instance) -> scheduler_pb2.Instance:
        return instance_to_proto(instance, self._deps.clock.now(), self._deps.zone)

    async def ActivateBackup(
        self, request: scheduler_pb2.ActivateBackupRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.ActivateBackupResponse:
        settings = None
        if request.has_settings:
            # proto3 has no presence for scalars: with has_settings every field is taken as given,
            # except an unspecified priority, which means the default (low).
            fields = {"daily_start_minute", "keep_latest_version", "roots"}
            if request.settings.priority:
                fields.add("priority")
            settings = _settings_input(request.settings, fields)
        instance, token = await handlers.activate_backup(
            self._deps,
            account_id=request.account_id,
            name=request.name,
            region=request.region,
            settings=settings,
            call=current_call(),
            instance_id=request.instance_id,
            host_id=request.host_id,
        )
        return scheduler_pb2.ActivateBackupResponse(instance=self._instance(instance), enrollment_token=token)

    async def RegisterInstances(
        self, request: scheduler_pb2.RegisterInstancesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.RegisterInstancesResponse:
        found = await handlers.register_instances(
            self._deps, request.account_id, [_inventory_input(r) for r in request.instances], call=current_call()
        )
        return scheduler_pb2.RegisterInstancesResponse(instances=[self._instance(i) for i in found])

    async def ReleaseInstance(
        self, request: scheduler_pb2.InstanceRef, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.Instance:
        return await self._instance_op(handlers.release_instance, request, context)

    async def IssueEnrollmentToken(
        self, request: scheduler_pb2.InstanceRef, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.ActivateBackupResponse:
        instance, token = await handlers.issue_enrollment_token(
            self._deps, request.instance_id, call=current_call(), etag=request.etag
        )
        return scheduler_pb2.ActivateBackupResponse(instance=self._instance(instance), enrollment_token=token)

    async def GetInstance(
        self, request: scheduler_pb2.GetInstanceRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.Instance:
        return self._instance(await handlers.get_instance(self._deps, request.instance_id, call=current_call()))

    async def ListInstances(
        self, request: scheduler_pb2.ListInstancesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.ListInstancesResponse:
        page = await handlers.list_instances(
            self._deps,
            request.account_id,
            request.region,
            page_size=request.page_size,
            page_token=request.page_token,
            call=current_call(),
        )
        return scheduler_pb2.ListInstancesResponse(
            instances=[self._instance(i) for i in page.instances], next_page_token=page.next_page_token
        )

    async def GetAdmission(
        self, request: scheduler_pb2.GetAdmissionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.Admission:
        view = await handlers.get_admission(self._deps, request.account_id, request.region, call=current_call())
        message = scheduler_pb2.Admission(
            running_backups=view.figures.running,
            waiting_backups=view.figures.waiting,
            max_concurrent_backups=view.admission.max_concurrent,
            admission_window_seconds=int(view.admission.window.total_seconds()),
        )
        if view.figures.oldest_waiting is not None:
            message.oldest_waiting_since.CopyFrom(to_timestamp(view.figures.oldest_waiting))
        return message

    async def RunBackupNow(
        self, request: scheduler_pb2.RunBackupNowRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.BackupJob:
        return job_to_proto(await handlers.run_backup_now(self._deps, request.instance_id, call=current_call()))

    async def _instance_op(
        self,
        op: InstanceOp,
        request: scheduler_pb2.InstanceRef,
        context: grpc.aio.ServicerContext[object, object],
    ) -> scheduler_pb2.Instance:
        return self._instance(await op(self._deps, request.instance_id, call=current_call(), etag=request.etag))

    async def PauseBackup(
        self, request: scheduler_pb2.InstanceRef, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.Instance:
        return await self._instance_op(handlers.pause_backup, request, context)

    async def ResumeBackup(
        self, request: scheduler_pb2.InstanceRef, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.Instance:
        return await self._instance_op(handlers.resume_backup, request, context)

    async def CancelBackup(
        self, request: scheduler_pb2.InstanceRef, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.Instance:
        return await self._instance_op(handlers.cancel_backup, request, context)

    async def UpdateSettings(
        self, request: scheduler_pb2.UpdateSettingsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.Instance:
        mask = list(request.update_mask)
        settings = _settings_input(request.settings, set(mask))
        instance = await handlers.update_settings(
            self._deps, request.instance_id, settings, mask, call=current_call(), etag=request.etag
        )
        return self._instance(instance)

    async def ListJobs(
        self, request: scheduler_pb2.ListJobsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.ListJobsResponse:
        page = await handlers.list_jobs(
            self._deps,
            request.instance_id,
            request.page_size or request.limit,
            page_token=request.page_token,
            call=current_call(),
        )
        return scheduler_pb2.ListJobsResponse(
            jobs=[job_to_proto(j) for j in page.jobs], next_page_token=page.next_page_token
        )

    async def GetJob(
        self, request: scheduler_pb2.GetJobRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.BackupJob:
        return job_to_proto(await handlers.get_job(self._deps, request.job_id, call=current_call()))

    async def CancelJob(
        self, request: scheduler_pb2.GetJobRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> scheduler_pb2.BackupJob:
        return job_to_proto(await handlers.cancel_job(self._deps, request.job_id, call=current_call()))


def register(servicer: SchedulerServicer) -> Callable[[grpc.aio.Server], None]:
    """The registration callback for ``strongroom_platform.runtime.start_grpc_server``."""

    def add(server: grpc.aio.Server) -> None:
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server)

    return add


def audit_event_to_proto(event: events_pb2.AuditRecorded) -> audit_pb2.AuditEvent:
    return audit_pb2.AuditEvent(
        event_id=event.meta.event_id,
        occurred_at=event.meta.occurred_at,
        service=event.meta.producer,
        subject=event.subject,
        principal_kind=event.principal_kind,
        account_ids=event.account_ids,
        method=event.method,
        verb=event.verb,
        resources=event.resources,
        result_code=event.result_code,
        result_message=event.result_message,
    )


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """The audit trail of every service, kept by the scheduler (ADR 0027)."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def ListAuditEvents(  # noqa: N802 (gRPC method name)
        self, request: audit_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> audit_pb2.ListAuditEventsResponse:
        events, next_page = await handlers.list_audit_events(
            self._deps,
            request.account_id,
            page_size=request.page_size,
            page_token=request.page_token,
            since=from_timestamp(request.since) if request.HasField("since") else None,
            until=from_timestamp(request.until) if request.HasField("until") else None,
            subject=request.subject,
            call=current_call(),
        )
        return audit_pb2.ListAuditEventsResponse(
            events=[audit_event_to_proto(e) for e in events], next_page_token=next_page
        )


def register_audit(servicer: AuditServicer) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server)

    return add
