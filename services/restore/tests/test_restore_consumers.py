"""The restore-updated consumer wired to the in-memory event bus."""

from __future__ import annotations

from restore_fixtures import eventually, job, restore_updated
from strongroom.common.v1 import common_pb2
from strongroom_platform.events import RESTORE_UPDATED
from strongroom_platform.testing import InMemoryEventBus
from strongroom_restore import consumers
from strongroom_restore.testing import InMemoryRestoreStore


async def test_consumes_updates_and_sends_garbage_to_dlq() -> None:
    bus = InMemoryEventBus()
    repo = InMemoryRestoreStore()
    async with repo.transaction() as tx:
        await tx.insert_job(job())
    consumer = bus.consumer(consumers.GROUP_ID, consumers.record_handlers(repo))
    await consumer.start()
    try:
        await bus.publish(RESTORE_UPDATED, b"i-dst", b"\x08\x96\x01 garbage")
        await bus.publish(
            RESTORE_UPDATED, b"i-dst", restore_updated(status=common_pb2.JOB_STATUS_UNSPECIFIED).SerializeToString()
        )
        await bus.publish(
            RESTORE_UPDATED, b"i-dst", restore_updated(status=common_pb2.JOB_STATUS_COMPLETE).SerializeToString()
        )
        await eventually(lambda: bus.committed(consumers.GROUP_ID, RESTORE_UPDATED) == 3)
    finally:
        await consumer.stop()
    done = await repo.get_job("r1")
    assert done is not None and done.status == common_pb2.JOB_STATUS_COMPLETE
    assert len(bus.topics[f"{RESTORE_UPDATED}.dlq"]) == 2
    garbage, unspecified = bus.dlq_errors[f"{RESTORE_UPDATED}.dlq"]
    assert "cannot decode RestoreUpdated" in garbage and "invalid status 0" in unspecified
