"""The point-created consumer wired to the in-memory event bus."""

from __future__ import annotations

import pytest
from catalog_fixtures import eventually, point_created, sample_manifest
from strongroom_catalog import consumers
from strongroom_catalog.testing import InMemoryCatalogStore
from strongroom_platform.events import POINT_CREATED
from strongroom_platform.testing import InMemoryEventBus, InMemoryObjectStore


async def wait_for_commit(bus: InMemoryEventBus, topic: str, count: int) -> None:
    await eventually(lambda: bus.committed(consumers.GROUP_ID, topic) >= count)


async def test_consumes_point_created_and_sends_garbage_to_dlq() -> None:
    bus = InMemoryEventBus()
    repo = InMemoryCatalogStore()
    store = InMemoryObjectStore()
    await store.put("manifests/p1", sample_manifest())
    consumer = bus.consumer(consumers.GROUP_ID, consumers.record_handlers(repo, store))
    await consumer.start()
    try:
        event = point_created().SerializeToString()
        await bus.publish(POINT_CREATED, b"i-1", b"\xff\xff not protobuf")
        await bus.publish(POINT_CREATED, b"i-1", event)
        await bus.publish(POINT_CREATED, b"i-1", event)  # redelivery
        await wait_for_commit(bus, POINT_CREATED, 3)
    finally:
        await consumer.stop()
    [version] = await repo.list_versions("i-1", accounts=None)
    assert version.points[0].browsable
    [(_, dead)] = bus.topics[f"{POINT_CREATED}.dlq"]
    assert dead == b"\xff\xff not protobuf"
    [error] = bus.dlq_errors[f"{POINT_CREATED}.dlq"]
    assert "cannot decode PointCreated" in error


@pytest.mark.parametrize("field", ["point_id", "manifest_key"])
async def test_incomplete_event_goes_to_dlq(field: str) -> None:
    bus = InMemoryEventBus()
    repo = InMemoryCatalogStore()
    consumer = bus.consumer(consumers.GROUP_ID, consumers.record_handlers(repo, InMemoryObjectStore()))
    await consumer.start()
    try:
        event = point_created()
        event.ClearField(field)  # type: ignore[arg-type]
        await bus.publish(POINT_CREATED, b"i-1", event.SerializeToString())
        await wait_for_commit(bus, POINT_CREATED, 1)
    finally:
        await consumer.stop()
    assert len(bus.topics[f"{POINT_CREATED}.dlq"]) == 1
    [error] = bus.dlq_errors[f"{POINT_CREATED}.dlq"]
    assert f"lacks {field}" in error
    assert await repo.list_versions("i-1", accounts=None) == []
