"""ManifestService (strongroom.gateway.v1): decrypted point manifests for the other services (ADR 0016).

Internal: the catalog indexes points from it. Agents never need it (they read
manifests through ReadManifest, authorized by their restore job).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import grpc
from strongroom.gateway.v1 import manifest_pb2, manifest_pb2_grpc
from strongroom_platform.manifest import ManifestFormatError
from strongroom_platform.objectstore import ObjectNotFound, ObjectStore

from strongroom_gateway import manifests
from strongroom_gateway.keys import AccountKeys
from strongroom_gateway.ports import GatewayStore

log = logging.getLogger(__name__)

# Bytes per streamed message: far below gRPC's default 4 MiB message limit.
PIECE_SIZE = 1 << 20


class ManifestServicer(manifest_pb2_grpc.ManifestServiceServicer):
    def __init__(self, *, store: GatewayStore, object_store: ObjectStore, keys: AccountKeys) -> None:
        self._store = store
        self._objects = object_store
        self._keys = keys

    async def ReadPointManifest(
        self, request: manifest_pb2.ReadPointManifestRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[manifest_pb2.ReadPointManifestResponse]:
        if not request.point_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "point_id is required")
        async with self._store.transaction() as tx:
            point = await tx.get_point(request.point_id)
        if point is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"point {request.point_id!r} does not exist")
        assert point is not None
        try:
            data = await manifests.read_point_manifest(self._objects, self._keys, point, store=self._store)
        except ObjectNotFound:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"manifest of point {point.point_id!r} is missing from the object store"
            )
        except ManifestFormatError as exc:
            log.error("manifest of point %s cannot be read: %s", point.point_id, exc)
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"manifest of point {point.point_id!r} cannot be read: {exc}"
            )
        view = memoryview(data)
        for start in range(0, max(len(data), 1), PIECE_SIZE):
            yield manifest_pb2.ReadPointManifestResponse(data=bytes(view[start : start + PIECE_SIZE]))


def register(servicer: ManifestServicer) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        manifest_pb2_grpc.add_ManifestServiceServicer_to_server(servicer, server)

    return add
