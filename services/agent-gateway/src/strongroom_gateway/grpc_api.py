"""The AgentGatewayService servicer: authenticate, call the domain functions (errors: ``grpc_errors``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from strongroom.agent.v1 import gateway_pb2, gateway_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.gateway.v1 import agent_admin_pb2, agent_admin_pb2_grpc
from strongroom_platform import grpc_methods
from strongroom_platform.auth import CallerKind
from strongroom_platform.auth.principal import current_call, peek_call
from strongroom_platform.clock import Clock
from strongroom_platform.events import to_timestamp
from strongroom_platform.objectstore import ObjectStore

from strongroom_gateway import agent_certs, agents, filesystems, ingest, points, validation
from strongroom_gateway.admission import BackupSlots
from strongroom_gateway.agent_certs import CertificateIssuer
from strongroom_gateway.agents import CANCELED, Identity
from strongroom_gateway.delivery import CommandDelivery
from strongroom_gateway.errors import FailedPrecondition
from strongroom_gateway.ports import GatewayStore, InstanceFilesystem
from strongroom_gateway.sessions import Session, SessionRegistry
from strongroom_gateway.vault import Vault

log = logging.getLogger(__name__)


class GatewayServicer(gateway_pb2_grpc.AgentGatewayServiceServicer):
    def __init__(
        self,
        *,
        store: GatewayStore,
        object_store: ObjectStore,
        clock: Clock,
        sessions: SessionRegistry,
        writer: ingest.PackWriter,
        unthrottled: bool = False,
        issuer: CertificateIssuer | None = None,
        vault: Vault | None = None,
        slots: BackupSlots | None = None,
        manifest_segments: bool = True,
    ) -> None:
        self._store = store
        # New points' manifests are written as format version 2, segments (ADR 0065).
        self._manifest_segments = manifest_segments
        self._objects = object_store
        self._clock = clock
        self._sessions = sessions
        self._writer = writer
        self._unthrottled = unthrottled
        # Sessions woken together read their commands and mark them delivered together (ADR 0050).
        # ... and hold backups beyond this replica's cap on running ones (ADR 0053).
        self._delivery = CommandDelivery(store, unthrottled=unthrottled, slots=slots)
        self._issuer = issuer
        self._vault = vault or Vault(store, object_store, writer.keys, clock)

    async def _identity(self, context: grpc.aio.ServicerContext[object, object]) -> Identity:
        # Behind the auth interceptor the agent is already authenticated (one database read per
        # call); a servicer served without it authenticates the metadata itself, just as strictly.
        call = peek_call()
        if call is not None and call.principal.kind is CallerKind.AGENT:
            return Identity(call.principal.agent_instance, call.principal.agent_account)
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode()
        return await agents.authenticate(authorization, store=self._store)

    async def Enroll(
        self, request: gateway_pb2.EnrollRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> gateway_pb2.EnrollResponse:
        issue = agent_certs.enrollment_issuer(self._issuer, request.csr_pem)
        return await agents.enroll(
            request, store=self._store, clock=self._clock, issue_certificate=issue, vault=self._vault
        )

    async def RenewCertificate(
        self, request: gateway_pb2.RenewCertificateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> gateway_pb2.RenewCertificateResponse:
        identity = await self._identity(context)
        if self._issuer is None:
            raise FailedPrecondition("this gateway issues no agent certificates (no agent CA configured)")
        return await agent_certs.renew(identity, request, store=self._store, issuer=self._issuer)

    async def Connect(  # type: ignore[override]  # grpc.aio's writer API; the stub knows only iterators
        self,
        request_iterator: AsyncIterator[gateway_pb2.AgentReport],
        context: grpc.aio.ServicerContext[object, object],
    ) -> None:
        # A coroutine writing to the stream, not an async generator: each command goes straight to
        # gRPC instead of through one generator per interceptor layer (ADR 0050, session 8).
        identity = await self._identity(context)
        session = self._sessions.open(identity.instance_id)
        reader = asyncio.create_task(self._read_reports(identity, request_iterator, session))
        # The agent's stream ending wakes the session: an idle one waits on its event alone.
        reader.add_done_callback(lambda _: session.wake.set())
        log.info("agent %s connected", identity.instance_id)
        try:
            while True:
                session.wake.clear()
                # Marked delivered before sending: the agent may call ReadManifest as soon as it has the command.
                commands = await self._delivery.take(identity, session)
                for key, command in commands:
                    session.sent.add(key)
                    await context.write(command)
                if reader.done() or session.closed.is_set():
                    break
                # Until woken: a new command (this process's consumer, a notification or the sweep;
                # ``session_events``), a close, or the agent's stream ending. No per-session poll:
                # an idle session costs no database work (ADR 0050).
                await session.wake.wait()
            if session.closed.is_set() and CANCELED in session.close_reason:
                # Backup was canceled (ADR 0040): the agent uninstalls itself; one that is offline now
                # learns it from the refusal of its next call, which says the same.
                await context.write(
                    gateway_pb2.AgentCommand(
                        uninstall=gateway_pb2.Uninstall(reason="backup of this instance was canceled")
                    )
                )
            if session.closed.is_set():
                code = grpc.StatusCode.ABORTED
                if "revoked" in session.close_reason:
                    code = grpc.StatusCode.UNAUTHENTICATED
                await context.abort(code, session.close_reason)
            error = reader.exception()
            if error is not None:
                raise error
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self._sessions.release(session)
            self._delivery.slots.forget(session)
            log.info("agent %s disconnected", identity.instance_id)

    async def _read_reports(
        self, identity: Identity, reports: AsyncIterator[gateway_pb2.AgentReport], session: Session
    ) -> None:
        async for report in reports:
            await agents.handle_report(
                identity, report, session, store=self._store, clock=self._clock, vault=self._vault
            )
            if report.WhichOneof("report") == "finished":
                self._delivery.slots.finished(session, report.finished.job_id)

    async def FindMissingChunks(
        self, request: gateway_pb2.FindMissingChunksRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> gateway_pb2.FindMissingChunksResponse:
        identity = await self._identity(context)
        return await points.find_missing_chunks(identity, request, store=self._store)

    async def UploadChunks(
        self,
        request_iterator: AsyncIterator[gateway_pb2.UploadChunkRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> gateway_pb2.UploadChunksResponse:
        identity = await self._identity(context)
        return await ingest.upload_chunks(identity, request_iterator, store=self._store, writer=self._writer)

    async def CommitPoint(
        self,
        request_iterator: AsyncIterator[gateway_pb2.CommitPointRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> gateway_pb2.CommitPointResponse:
        identity = await self._identity(context)
        return await points.commit_point(
            identity,
            request_iterator,
            store=self._store,
            object_store=self._objects,
            clock=self._clock,
            write_slots=self._writer.write_slots,
            keys=self._writer.keys,
            vault=self._vault,
            segment_writer=self._writer if self._manifest_segments else None,
        )

    async def ReadManifest(
        self, request: gateway_pb2.ReadManifestRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[gateway_pb2.ReadManifestResponse]:
        identity = await self._identity(context)
        async for response in points.read_manifest(
            identity, request, store=self._store, object_store=self._objects, keys=self._writer.keys
        ):
            yield response

    async def ReadChunks(  # type: ignore[override]  # yields serialized messages: see ``register``
        self, request: gateway_pb2.ReadChunksRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[bytes]:
        """Serialized ``ReadChunksResponse`` messages (``register`` sends them as they are)."""
        identity = await self._identity(context)
        async for response in points.read_chunks(
            identity, request, store=self._store, object_store=self._objects, keys=self._writer.keys
        ):
            yield response


class AgentAdminServicer(agent_admin_pb2_grpc.AgentAdminServiceServicer):
    """Revocation of agent certificates, on the internal listener (ADR 0028)."""

    def __init__(
        self, *, store: GatewayStore, clock: Clock, sessions: SessionRegistry, vault: Vault | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._sessions = sessions
        self._vault = vault

    async def RevokeAgentCertificates(
        self,
        request: agent_admin_pb2.RevokeAgentCertificatesRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> agent_admin_pb2.RevokeAgentCertificatesResponse:
        current_call()  # fails closed when served without the interceptor
        return await agent_certs.revoke(request, store=self._store, clock=self._clock, sessions=self._sessions)

    async def ListInstanceFilesystems(
        self,
        request: agent_admin_pb2.ListInstanceFilesystemsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> agent_admin_pb2.ListInstanceFilesystemsResponse:
        current_call()
        validation.identifier("instance_id", request.instance_id)
        found = await filesystems.listed(self._store, request.instance_id, pending_only=request.pending_only)
        return agent_admin_pb2.ListInstanceFilesystemsResponse(filesystems=[_filesystem(f) for f in found])

    async def ApproveInstanceFilesystem(
        self,
        request: agent_admin_pb2.ApproveInstanceFilesystemRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> agent_admin_pb2.InstanceFilesystem:
        current_call()
        validation.identifier("instance_id", request.instance_id)
        validation.mount_point("mount_point", request.mount_point)
        approved = await filesystems.approve(
            self._store, request.instance_id, request.mount_point, clock=self._clock, vault=self._vault
        )
        return _filesystem(approved)


def _filesystem(found: InstanceFilesystem) -> agent_admin_pb2.InstanceFilesystem:
    out = agent_admin_pb2.InstanceFilesystem(
        filesystem=common_pb2.Filesystem.FromString(found.filesystem),
        approved=found.approved,
        first_seen_at=to_timestamp(found.first_seen_at),
    )
    if found.approved_at is not None:
        out.approved_at.CopyFrom(to_timestamp(found.approved_at))
    return out


def register_admin(servicer: AgentAdminServicer) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        agent_admin_pb2_grpc.add_AgentAdminServiceServicer_to_server(servicer, server)

    return add


# Methods whose servicer yields serialized messages (ADR 0069): sent as they are.
_SERIALIZERS: dict[str, grpc_methods.Serializer] = {"ReadChunks": grpc_methods.as_sent}


def register(servicer: GatewayServicer) -> Callable[[grpc.aio.Server], None]:
    """The generated registration, the methods of ``_SERIALIZERS`` answering through theirs."""
    return grpc_methods.register_service(
        gateway_pb2_grpc.add_AgentGatewayServiceServicer_to_server, servicer, _SERIALIZERS
    )
