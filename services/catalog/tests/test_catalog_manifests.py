"""Indexing through the gateway's ManifestService (manifests are encrypted at rest, ADR 0016)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from catalog_fixtures import point_created, sample_manifest
from strongroom.gateway.v1 import manifest_pb2, manifest_pb2_grpc
from strongroom_catalog import handlers
from strongroom_catalog.manifests import GatewayManifestReader
from strongroom_catalog.testing import InMemoryCatalogStore
from strongroom_platform.manifest import ManifestFormatError
from strongroom_platform.objectstore import ObjectNotFound
from strongroom_platform.runtime import start_grpc_server
from strongroom_platform.testing import InMemoryObjectStore


class FakeGateway(manifest_pb2_grpc.ManifestServiceServicer):
    def __init__(self, manifests: dict[str, bytes]) -> None:
        self.manifests = manifests

    async def ReadPointManifest(
        self, request: manifest_pb2.ReadPointManifestRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[manifest_pb2.ReadPointManifestResponse]:
        if request.point_id == "tampered":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "authentication failed")
        data = self.manifests.get(request.point_id)
        if data is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such point")
        assert data is not None
        for start in range(0, len(data), 7):  # several pieces, concatenated by the reader
            yield manifest_pb2.ReadPointManifestResponse(data=data[start : start + 7])


@pytest.fixture
async def reader() -> AsyncIterator[GatewayManifestReader]:
    gateway = FakeGateway({"p1": sample_manifest()})

    def add(server: grpc.aio.Server) -> None:
        manifest_pb2_grpc.add_ManifestServiceServicer_to_server(gateway, server)

    server, port = await start_grpc_server("127.0.0.1:0", add)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield GatewayManifestReader(channel)
    await server.stop(None)


async def test_reader_joins_the_pieces_and_maps_errors(reader: GatewayManifestReader) -> None:
    assert await reader.read_point_manifest("p1") == sample_manifest()
    with pytest.raises(ObjectNotFound):
        await reader.read_point_manifest("p-missing")
    with pytest.raises(ManifestFormatError, match="authentication failed"):
        await reader.read_point_manifest("tampered")


async def test_point_is_indexed_from_the_gateway(reader: GatewayManifestReader) -> None:
    repo = InMemoryCatalogStore()
    await handlers.handle_point_created(point_created("p1"), repo=repo, store=reader)
    point = await repo.get_point("p1")
    assert point is not None and point.browsable
    await handlers.handle_point_created(point_created("tampered"), repo=repo, store=reader)
    bad = await repo.get_point("tampered")
    assert bad is not None and not bad.browsable and "authentication failed" in (bad.index_error or "")


async def test_encrypted_manifest_in_the_object_store_is_a_clear_index_error() -> None:
    repo = InMemoryCatalogStore()
    event = point_created("p1")
    store = InMemoryObjectStore()
    await store.put(event.manifest_key, b"SRME\x01" + bytes(40))
    await handlers.handle_point_created(event, repo=repo, store=store)
    point = await repo.get_point("p1")
    assert point is not None and "STRONGROOM_GATEWAY_ADDR" in (point.index_error or "")
