"""gRPC ``RestoreService``: a thin servicer over ``handlers``; errors become status codes in ``grpc_errors``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.restore.v1 import restore_pb2, restore_pb2_grpc
from strongroom_platform.auth import current_call
from strongroom_platform.clock import Clock
from strongroom_platform.events import to_timestamp

from strongroom_restore import handlers
from strongroom_restore.model import RestoreJob
from strongroom_restore.ports import CatalogClient, InstanceDirectory, RestoreStore


def job_message(job: RestoreJob) -> restore_pb2.RestoreJob:
    message = restore_pb2.RestoreJob(
        restore_job_id=job.restore_job_id,
        point_id=job.point_id,
        source_instance_id=job.source_instance_id,
        target_instance_id=job.target_instance_id,
        status=common_pb2.JobStatus.ValueType(job.status),
        include_paths=job.include_paths,
        exclude_paths=job.exclude_paths,
        target_path=job.target_path,
        conflict_policy=gateway_pb2.ConflictPolicy.ValueType(job.conflict_policy),
        error=job.error,
        stats=job.stats,
        created_at=to_timestamp(job.created_at),
        failed_files=[common_pb2.FileError(path=path, reason=reason) for path, reason in job.failed_files],
    )
    if job.finished_at is not None:
        message.finished_at.CopyFrom(to_timestamp(job.finished_at))
    return message


class RestoreServicer(restore_pb2_grpc.RestoreServiceServicer):
    """Every method passes the call's ``CallAuth`` (set by the auth interceptor) to its handler.

    ``instances`` (``scheduler_client.SchedulerInstanceDirectory`` in production) checks the target
    of every new job; without it no job can be created (fail closed), the other calls still serve.
    """

    def __init__(self, repo: RestoreStore, catalog: CatalogClient, clock: Clock, instances: InstanceDirectory) -> None:
        self._repo = repo
        self._catalog = catalog
        self._clock = clock
        self._instances = instances

    async def CreateRestoreJob(
        self, request: restore_pb2.CreateRestoreJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> restore_pb2.RestoreJob:
        call = current_call()
        job = await handlers.create_restore_job(
            request, repo=self._repo, catalog=self._catalog, instances=self._instances, clock=self._clock, call=call
        )
        return job_message(job)

    async def GetRestoreJob(
        self, request: restore_pb2.GetRestoreJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> restore_pb2.RestoreJob:
        job = await handlers.get_restore_job(self._repo, request.restore_job_id, call=current_call())
        return job_message(job)

    async def ListRestoreJobs(
        self, request: restore_pb2.ListRestoreJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> restore_pb2.ListRestoreJobsResponse:
        page = await handlers.list_restore_jobs(
            self._repo,
            request.instance_id,
            page_size=request.page_size,
            page_token=request.page_token,
            call=current_call(),
        )
        return restore_pb2.ListRestoreJobsResponse(
            jobs=[job_message(j) for j in page.jobs], next_page_token=page.next_page_token
        )

    async def CancelRestoreJob(
        self, request: restore_pb2.GetRestoreJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> restore_pb2.RestoreJob:
        job = await handlers.cancel_restore_job(
            self._repo, request.restore_job_id, clock=self._clock, call=current_call()
        )
        return job_message(job)


def register(servicer: RestoreServicer) -> Callable[[grpc.aio.Server], None]:
    """The registration callback for ``strongroom_platform.runtime.start_grpc_server``."""

    def add(server: grpc.aio.Server) -> None:
        restore_pb2_grpc.add_RestoreServiceServicer_to_server(servicer, server)

    return add
