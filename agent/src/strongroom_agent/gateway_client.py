"""The agent's view of the gateway: a small Protocol plus its gRPC implementation.

Backup, restore and the session loop depend only on ``GatewayClient`` so tests
substitute an in-memory fake. ``GrpcGatewayClient`` calls over the agent mTLS listener with the
client certificate (ADR 0028), or, for an agent without one, with
``authorization: Bearer <instance_id>.<credential>``; after a certificate renewal it moves to a
channel built with the new certificate (:meth:`GrpcGatewayClient.use_channel`). gRPC failures
surface as ``GatewayError`` so callers never import grpc.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Literal, Protocol, cast

import grpc
from strongroom.agent.v1 import gateway_pb2, gateway_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom_telemetry.grpc_tracing import client_interceptors

from strongroom_agent.transport import GatewayTrust, channel_credentials
from strongroom_agent.wire import parse_read_chunks

# Chunks are up to 16 MiB and file entries of huge files carry many chunk ids.
MAX_MESSAGE_BYTES = 64 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
# ReadChunksRequest.max_message_bytes: many small chunks per message (the gateway caps it at 4 MiB),
# so a restore of small files does not pay gRPC's per-message cost for every chunk (ADR 0019).
READ_MESSAGE_BYTES = 4 << 20
ENROLL_TIMEOUT_SECONDS = 15.0
UNARY_TIMEOUT_SECONDS = 120.0


class ChunkSent(Protocol):
    """What the restore reads of a chunk the gateway sent: a ``wire.SentChunk``, or a ``ServedChunk`` message.

    ``data`` may be a view into the received message (which it keeps alive).
    """

    @property
    def chunk_id(self) -> bytes: ...

    @property
    def data(self) -> bytes | memoryview: ...

    @property
    def compression(self) -> int: ...

    @property
    def raw_length(self) -> int: ...

    @property
    def damage(self) -> str: ...


# The gRPC status names (``grpc.StatusCode``), so mypy catches a misspelt code where one is compared.
StatusCode = Literal[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
]


class GatewayError(Exception):
    """A gateway call failed. ``code`` is the gRPC status name, e.g. ``UNAVAILABLE``."""

    def __init__(self, code: StatusCode, details: str) -> None:
        super().__init__(f"{code}: {details}" if details else code)
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, exc: grpc.aio.AioRpcError) -> GatewayError:
        return cls(cast(StatusCode, exc.code().name), exc.details() or "")

    @classmethod
    def from_streaming_rpc(cls, exc: grpc.aio.AioRpcError) -> GatewayError:
        """``from_rpc`` for a call whose requests the agent streams (UploadChunks, CommitPoint).

        When the gateway ends such a call while requests are still being written
        (it refuses or fails a request early: its database is away, say),
        grpc.aio's client can replace the status the gateway sent with its own
        INTERNAL "Internal error from Core" (grpc/grpc#36066, open). Against a
        server answering UNAVAILABLE after the first message, 3-5 of 40 calls of
        16-64 messages came back so, none of 4. The gateway's status is lost; it
        is reported as UNAVAILABLE, so that ``RetryPolicy`` makes the call again
        (every gateway call is idempotent) and a refusal for good still fails the
        job once the attempts are used up.
        """
        if exc.code() is grpc.StatusCode.INTERNAL and exc.details() == _CLIENT_LOST_THE_STATUS:
            return cls(
                "UNAVAILABLE",
                "the gateway ended the call while its requests were being sent, and gRPC lost its status; retry",
            )
        return cls.from_rpc(exc)


_CLIENT_LOST_THE_STATUS = "Internal error from Core"  # grpc.aio's text, not one the gateway sends


class ControlStream(Protocol):
    """One open Connect stream."""

    async def write(self, report: gateway_pb2.AgentReport) -> None: ...

    async def read(self) -> gateway_pb2.AgentCommand | None:
        """The next command, or None when the gateway closed the stream cleanly."""
        ...

    def cancel(self) -> None: ...


class GatewayClient(Protocol):
    """The calls an enrolled agent makes."""

    def connect(self) -> ControlStream: ...

    async def find_missing_chunks(self, job_id: str, chunk_ids: Sequence[bytes]) -> list[bytes]: ...

    async def upload_chunks(self, requests: Sequence[bytes]) -> gateway_pb2.UploadChunksResponse:
        """One UploadChunks call of ``requests``, each a serialized ``UploadChunkRequest``.

        Serialized by the caller, in a worker thread: serializing megabytes of
        payload on the event loop held the GIL there.
        """
        ...

    async def commit_point(
        self, requests: AsyncIterator[gateway_pb2.CommitPointRequest]
    ) -> gateway_pb2.CommitPointResponse: ...

    def read_manifest(self, request: gateway_pb2.ReadManifestRequest) -> AsyncIterator[Sequence[common_pb2.FileEntry]]:
        """The point's entries in path order, as the messages bring them (a sequence per message)."""
        ...

    def read_chunks(self, restore_job_id: str, chunk_ids: Sequence[bytes]) -> AsyncIterator[ChunkSent]:
        """The chunks, in any order, as sent (decode each with ``chunking.decode_chunk``).

        A chunk the gateway cannot serve comes with ``damage`` set instead of
        data; a gateway that predates that fails the call instead.
        """
        ...


def open_channel(address: str, trust: GatewayTrust, client: tuple[bytes, bytes] | None = None) -> grpc.aio.Channel:
    """A channel to the gateway: TLS under ``trust`` (pinned CA), presenting the client certificate
    ``client`` (certificate, key) when given; plaintext only if ``trust`` says so."""
    credentials = channel_credentials(trust, client)
    # Every call carries the current trace (the job's span), so the gateway continues it.
    tracing = client_interceptors()
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=tracing)
    return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS, interceptors=tracing)


async def enroll(address: str, request: gateway_pb2.EnrollRequest, trust: GatewayTrust) -> gateway_pb2.EnrollResponse:
    """Exchange an enrollment token for a credential (the only call without authorization).

    The channel is pinned before the token is sent, so an interceptor never sees it.
    """
    async with open_channel(address, trust) as channel:
        stub = gateway_pb2_grpc.AgentGatewayServiceStub(channel)
        try:
            response: gateway_pb2.EnrollResponse = await stub.Enroll(request, timeout=ENROLL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise GatewayError.from_rpc(exc) from exc
        return response


async def renew_by_bearer(
    address: str, trust: GatewayTrust, instance_id: str, credential: str, csr_pem: bytes
) -> gateway_pb2.AgentCertificate:
    """``RenewCertificate`` on the server-TLS listener with the bearer credential (an expired or
    missing certificate). Raises GatewayError (UNAUTHENTICATED when the instance was revoked)."""
    async with open_channel(address, trust) as channel:
        stub = gateway_pb2_grpc.AgentGatewayServiceStub(channel)
        try:
            response: gateway_pb2.RenewCertificateResponse = await stub.RenewCertificate(
                gateway_pb2.RenewCertificateRequest(csr_pem=csr_pem),
                metadata=(("authorization", f"Bearer {instance_id}.{credential}"),),
                timeout=ENROLL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            raise GatewayError.from_rpc(exc) from exc
        return response.certificate


class _GrpcControlStream:
    def __init__(self, call: grpc.aio.StreamStreamCall[gateway_pb2.AgentReport, gateway_pb2.AgentCommand]) -> None:
        self._call = call

    async def write(self, report: gateway_pb2.AgentReport) -> None:
        try:
            await self._call.write(report)
        except grpc.aio.AioRpcError as exc:
            raise GatewayError.from_rpc(exc) from exc
        except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:  # the call already finished
            raise GatewayError("UNAVAILABLE", f"control stream closed: {exc}") from exc

    async def read(self) -> gateway_pb2.AgentCommand | None:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise GatewayError.from_rpc(exc) from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this read is being cancelled
            # grpc.aio raises CancelledError from a read when the call itself was cancelled
            # locally (e.g. by another task's interrupted write): the stream is gone, not us.
            raise GatewayError("CANCELLED", "control stream cancelled") from None
        # At the end of the stream grpc returns its EOF sentinel rather than a message.
        return message if isinstance(message, gateway_pb2.AgentCommand) else None

    def cancel(self) -> None:
        self._call.cancel()


_UPLOAD_CHUNKS = f"/{gateway_pb2.DESCRIPTOR.services_by_name['AgentGatewayService'].full_name}/UploadChunks"


def _serialized_upload(
    channel: grpc.aio.Channel,
) -> grpc.aio.StreamUnaryMultiCallable[bytes, gateway_pb2.UploadChunksResponse]:
    """UploadChunks taking requests already serialized (no serializer: the bytes are sent as they are)."""
    return channel.stream_unary(
        _UPLOAD_CHUNKS, request_serializer=None, response_deserializer=gateway_pb2.UploadChunksResponse.FromString
    )


_READ_CHUNKS = f"/{gateway_pb2.DESCRIPTOR.services_by_name['AgentGatewayService'].full_name}/ReadChunks"


def _raw_read_chunks(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryStreamMultiCallable[gateway_pb2.ReadChunksRequest, bytes]:
    """ReadChunks answering the messages as received (no deserializer: ``parse_read_chunks`` reads them)."""
    return channel.unary_stream(
        _READ_CHUNKS, request_serializer=gateway_pb2.ReadChunksRequest.SerializeToString, response_deserializer=None
    )


class GrpcGatewayClient:
    """``GatewayClient`` over a gRPC channel, authenticated as one enrolled instance.

    With ``credential`` every call carries the bearer; without it the channel's client
    certificate is the agent's identity (the mTLS listener).
    """

    def __init__(self, channel: grpc.aio.Channel, instance_id: str, credential: str | None) -> None:
        self._stub = gateway_pb2_grpc.AgentGatewayServiceStub(channel)
        self._upload = _serialized_upload(channel)
        self._read_chunks = _raw_read_chunks(channel)
        self._metadata: tuple[tuple[str, str], ...] = ()
        if credential is not None:
            self._metadata = (("authorization", f"Bearer {instance_id}.{credential}"),)

    def use_channel(self, channel: grpc.aio.Channel) -> None:
        """Make later calls on ``channel`` (built with a renewed certificate); calls in flight
        finish on the old one."""
        self._stub = gateway_pb2_grpc.AgentGatewayServiceStub(channel)
        self._upload = _serialized_upload(channel)
        self._read_chunks = _raw_read_chunks(channel)

    async def renew_certificate(self, csr_pem: bytes) -> gateway_pb2.AgentCertificate:
        """``RenewCertificate`` on this client's channel (mTLS: the current certificate)."""
        request = gateway_pb2.RenewCertificateRequest(csr_pem=csr_pem)
        try:
            response: gateway_pb2.RenewCertificateResponse = await self._stub.RenewCertificate(
                request, metadata=self._metadata, timeout=ENROLL_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:
            raise GatewayError.from_rpc(exc) from exc
        return response.certificate

    def connect(self) -> ControlStream:
        return _GrpcControlStream(self._stub.Connect(None, metadata=self._metadata))

    async def find_missing_chunks(self, job_id: str, chunk_ids: Sequence[bytes]) -> list[bytes]:
        request = gateway_pb2.FindMissingChunksRequest(job_id=job_id, chunk_ids=list(chunk_ids))
        try:
            response = await self._stub.FindMissingChunks(
                request, metadata=self._metadata, timeout=UNARY_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:
            raise GatewayError.from_rpc(exc) from exc
        return list(response.missing_chunk_ids)

    async def upload_chunks(self, requests: Sequence[bytes]) -> gateway_pb2.UploadChunksResponse:
        try:
            response: gateway_pb2.UploadChunksResponse = await self._upload(
                iter(requests), metadata=self._metadata, timeout=UNARY_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:
            raise GatewayError.from_streaming_rpc(exc) from exc
        return response

    async def commit_point(
        self, requests: AsyncIterator[gateway_pb2.CommitPointRequest]
    ) -> gateway_pb2.CommitPointResponse:
        try:
            response: gateway_pb2.CommitPointResponse = await self._stub.CommitPoint(requests, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise GatewayError.from_streaming_rpc(exc) from exc
        return response

    async def read_manifest(
        self, request: gateway_pb2.ReadManifestRequest
    ) -> AsyncIterator[Sequence[common_pb2.FileEntry]]:
        call = self._stub.ReadManifest(request, metadata=self._metadata)
        try:
            async for response in call:
                yield response.entries  # one step per message, not per entry
        except grpc.aio.AioRpcError as exc:
            raise GatewayError.from_rpc(exc) from exc
        finally:
            call.cancel()

    async def read_chunks(self, restore_job_id: str, chunk_ids: Sequence[bytes]) -> AsyncIterator[ChunkSent]:
        request = gateway_pb2.ReadChunksRequest(
            restore_job_id=restore_job_id,
            chunk_ids=list(chunk_ids),
            accept_compressed=True,
            max_message_bytes=READ_MESSAGE_BYTES,
            tolerate_damage=True,
        )
        call = self._read_chunks(request, metadata=self._metadata, timeout=UNARY_TIMEOUT_SECONDS)
        try:
            async for message in call:
                try:
                    chunks = parse_read_chunks(message)
                except ValueError as exc:
                    raise GatewayError("INTERNAL", f"a ReadChunks message does not parse: {exc}") from None
                for chunk in chunks:
                    yield chunk
        except grpc.aio.AioRpcError as exc:
            raise GatewayError.from_rpc(exc) from exc
        finally:
            call.cancel()
