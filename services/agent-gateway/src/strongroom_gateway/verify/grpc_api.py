"""VerifyService servicer (strongroom.gateway.v1): convert, call ``service``, convert back."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from strongroom.gateway.v1 import verify_pb2, verify_pb2_grpc
from strongroom_platform.auth.principal import current_call
from strongroom_platform.clock import Clock
from strongroom_platform.events import to_timestamp

from strongroom_gateway.verify import service
from strongroom_gateway.verify.model import DamagedFile, DamagedPack, Recoverability, Verification
from strongroom_gateway.verify.ports import VerifyStore

SCOPES = {
    "point": verify_pb2.VERIFICATION_SCOPE_POINT,
    "instance": verify_pb2.VERIFICATION_SCOPE_INSTANCE,
    "account": verify_pb2.VERIFICATION_SCOPE_ACCOUNT,
    "sample": verify_pb2.VERIFICATION_SCOPE_SAMPLE,
}
STATES = {
    "queued": verify_pb2.VERIFICATION_STATE_QUEUED,
    "running": verify_pb2.VERIFICATION_STATE_RUNNING,
    "clean": verify_pb2.VERIFICATION_STATE_CLEAN,
    "damaged": verify_pb2.VERIFICATION_STATE_DAMAGED,
    "failed": verify_pb2.VERIFICATION_STATE_FAILED,
}


def _ts(when: dt.datetime | None) -> Timestamp | None:
    return to_timestamp(when) if when is not None else None


def to_proto(
    v: Verification, files: Sequence[DamagedFile] = (), packs: Sequence[DamagedPack] = ()
) -> verify_pb2.Verification:
    p = v.progress
    return verify_pb2.Verification(
        verification_id=v.verification_id,
        account_id=v.account_id,
        scope=SCOPES[v.scope],
        target_id=v.target_id,
        state=STATES[v.state],
        created_at=_ts(v.created_at),
        started_at=_ts(v.started_at),
        finished_at=_ts(v.finished_at),
        points_total=p.points_total,
        points_done=p.points_done,
        packs_checked=p.packs_checked,
        bytes_read=p.bytes_read,
        damaged_files_count=p.damaged_files,
        damaged_packs_count=p.damaged_packs,
        damaged_files=[verify_pb2.DamagedFile(point_id=f.point_id, path=f.path, reason=f.reason) for f in files],
        damaged_packs=[verify_pb2.DamagedPack(pack_id=k.pack_id, reason=k.reason) for k in packs],
        error=v.error,
    )


def _recoverability(r: Recoverability) -> verify_pb2.InstanceRecoverability:
    return verify_pb2.InstanceRecoverability(
        instance_id=r.instance_id,
        last_verified_point_id=r.last_verified_point_id,
        last_verified_point_created_at=_ts(r.last_verified_point_created_at),
        last_verified_at=_ts(r.last_verified_at),
        damaged_files=r.damaged_files,
        damaged_points=r.damaged_points,
        last_verification_id=r.last_verification_id,
    )


class VerifyServicer(verify_pb2_grpc.VerifyServiceServicer):
    def __init__(self, *, store: VerifyStore, clock: Clock, wake: asyncio.Event | None = None) -> None:
        self._store = store
        self._clock = clock
        self._wake = wake

    async def StartVerification(
        self, request: verify_pb2.StartVerificationRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> verify_pb2.Verification:
        verification = await service.start_verification(
            request, store=self._store, clock=self._clock, call=current_call(), wake=self._wake
        )
        return to_proto(verification)

    async def GetVerification(
        self, request: verify_pb2.GetVerificationRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> verify_pb2.Verification:
        return to_proto(*await service.get_verification(request, store=self._store, call=current_call()))

    async def ListVerifications(
        self, request: verify_pb2.ListVerificationsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> verify_pb2.ListVerificationsResponse:
        found, next_page = await service.list_verifications(request, store=self._store, call=current_call())
        return verify_pb2.ListVerificationsResponse(
            verifications=[to_proto(v) for v in found], next_page_token=next_page
        )

    async def GetRecoverability(
        self, request: verify_pb2.GetRecoverabilityRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> verify_pb2.GetRecoverabilityResponse:
        found = await service.recoverability(request, store=self._store, call=current_call())
        return verify_pb2.GetRecoverabilityResponse(instances=[_recoverability(r) for r in found])


def register(servicer: VerifyServicer) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        verify_pb2_grpc.add_VerifyServiceServicer_to_server(servicer, server)

    return add
