"""gRPC adapter of :class:`~strongroom_restore.ports.CatalogClient` (the catalog's ``GetPoint``)."""

from __future__ import annotations

import grpc
from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc

from strongroom_restore.errors import CatalogUnavailable, InvalidArgument
from strongroom_restore.model import CatalogPoint


class GrpcCatalogClient:
    """Asks the catalog service; NOT_FOUND becomes None, INVALID_ARGUMENT (the caller's id cannot be
    one, e.g. it holds a NUL) InvalidArgument with the catalog's message, any other failure
    CatalogUnavailable."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 10.0) -> None:
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._timeout = timeout

    async def get_point(self, point_id: str) -> CatalogPoint | None:
        try:
            point: catalog_pb2.Point = await self._stub.GetPoint(
                catalog_pb2.GetPointRequest(point_id=point_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # found by schemathesis (ADR 0055): was 503
                raise InvalidArgument(f"point_id: {exc.details()}") from None
            raise CatalogUnavailable(f"catalog could not look up point {point_id!r}: {exc.details()}") from exc
        return CatalogPoint(
            point_id=point.point_id,
            instance_id=point.instance_id,
            account_id=point.account_id,
            mount_point=point.filesystem.mount_point,
            manifest_key=point.manifest_key,
        )
