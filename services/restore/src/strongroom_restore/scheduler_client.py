"""gRPC adapter of :class:`~strongroom_restore.ports.InstanceDirectory` (the scheduler's ``GetInstance``).

The restore service calls with its service certificate; the authorization table admits the
``restore`` service to ``GetInstance`` for every account (ADR 0024).
"""

from __future__ import annotations

import grpc
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from strongroom_restore.errors import InvalidArgument, SchedulerUnavailable
from strongroom_restore.model import InstanceFacts


class SchedulerInstanceDirectory:
    """Asks the scheduler; NOT_FOUND becomes None, INVALID_ARGUMENT (the caller's id cannot be one)
    InvalidArgument with the scheduler's message, any other failure SchedulerUnavailable."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 10.0) -> None:
        self._stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        self._timeout = timeout

    async def get_instance(self, instance_id: str) -> InstanceFacts | None:
        try:
            instance: scheduler_pb2.Instance = await self._stub.GetInstance(
                scheduler_pb2.GetInstanceRequest(instance_id=instance_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(f"instance_id: {exc.details()}") from None
            raise SchedulerUnavailable(
                f"scheduler could not look up instance {instance_id!r}: {exc.details()}"
            ) from exc
        return InstanceFacts(
            instance_id=instance.instance_id,
            account_id=instance.account_id,
            region=instance.region,
            status=int(instance.status),
            enrolled=instance.agent_enrolled,
        )
