"""Where the catalog gets a point's manifest: from the agent gateway, which alone can decrypt it (ADR 0016).

Manifests are stored encrypted with the account's data key; the catalog asks the
gateway's internal ManifestService for the plaintext bytes by point id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

import grpc
from strongroom.gateway.v1 import manifest_pb2, manifest_pb2_grpc
from strongroom_platform.manifest import ManifestFormatError
from strongroom_platform.objectstore import ObjectNotFound, ObjectStore

PIECE = 1 << 20  # what the gateway sends per message, and what is read per range of a plaintext object


@runtime_checkable
class ManifestReader(Protocol):
    async def read_point_manifest(self, point_id: str) -> bytes:
        """The point's manifest bytes (docs/formats/manifest.md).

        Raises ObjectNotFound when the point or its manifest does not exist and
        ManifestFormatError when it cannot be read; anything else is transient.
        """
        ...

    def stream_point_manifest(self, point_id: str) -> AsyncIterator[bytes]:
        """The same bytes in pieces, as they arrive (bounded memory); the same errors, raised
        when the stream fails."""
        ...


class GatewayManifestReader:
    """ManifestReader over the gateway's ManifestService."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 300.0) -> None:
        self._stub = manifest_pb2_grpc.ManifestServiceStub(channel)
        self._timeout = timeout

    async def read_point_manifest(self, point_id: str) -> bytes:
        return b"".join([piece async for piece in self.stream_point_manifest(point_id)])

    async def stream_point_manifest(self, point_id: str) -> AsyncIterator[bytes]:
        request = manifest_pb2.ReadPointManifestRequest(point_id=point_id)
        try:
            async for response in self._stub.ReadPointManifest(request, timeout=self._timeout):
                yield response.data
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise ObjectNotFound(exc.details() or f"manifest of point {point_id!r} not found") from None
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise ManifestFormatError(exc.details() or f"manifest of point {point_id!r} is unreadable") from None
            raise


async def manifest_pieces(store: ObjectStore | ManifestReader, point_id: str, key: str) -> AsyncIterator[bytes]:
    """The manifest of the point in pieces: from the gateway (``ManifestReader``, ADR 0016) or, for
    plaintext manifests only (tests, tools), read by ranges from the object store."""
    if isinstance(store, ManifestReader):
        async for piece in store.stream_point_manifest(point_id):
            yield piece
        return
    size = (await store.stat(key)).size
    offset = 0
    while offset < size:
        piece = await store.get(key, offset=offset, length=min(PIECE, size - offset))
        if not piece:
            return
        if offset == 0 and piece[:4] == b"SRME":
            raise ManifestFormatError("the manifest is encrypted: set STRONGROOM_GATEWAY_ADDR to read it")
        offset += len(piece)
        yield piece
