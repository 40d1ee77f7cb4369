"""Where the catalog gets a point's manifest: from the agent gateway, which alone can decrypt it (ADR 0016).

Manifests are stored encrypted with the account's data key; the catalog asks the
gateway's internal ManifestService for the plaintext bytes by point id.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import grpc
from strongroom.gateway.v1 import manifest_pb2, manifest_pb2_grpc
from strongroom_platform.manifest import ManifestFormatError
from strongroom_platform.objectstore import ObjectNotFound


@runtime_checkable
class ManifestReader(Protocol):
    async def read_point_manifest(self, point_id: str) -> bytes:
        """The point's manifest bytes (docs/formats/manifest.md).

        Raises ObjectNotFound when the point or its manifest does not exist and
        ManifestFormatError when it cannot be read; anything else is transient.
        """
        ...


class GatewayManifestReader:
    """ManifestReader over the gateway's ManifestService."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 300.0) -> None:
        self._stub = manifest_pb2_grpc.ManifestServiceStub(channel)
        self._timeout = timeout

    async def read_point_manifest(self, point_id: str) -> bytes:
        request = manifest_pb2.ReadPointManifestRequest(point_id=point_id)
        try:
            parts = [r.data async for r in self._stub.ReadPointManifest(request, timeout=self._timeout)]
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise ObjectNotFound(exc.details() or f"manifest of point {point_id!r} not found") from None
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise ManifestFormatError(exc.details() or f"manifest of point {point_id!r} is unreadable") from None
            raise
        return b"".join(parts)
