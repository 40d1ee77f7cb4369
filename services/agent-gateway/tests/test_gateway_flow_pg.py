"""Backup and restore through the gRPC API with the PostgreSQL store (real server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from gateway_helpers import GatewayHarness, chunk_id, dir_entry, file_entry
from strongroom.agent.v1 import gateway_pb2
from strongroom.events.v1 import events_pb2
from strongroom_gateway.handlers import handle_job_requested
from strongroom_gateway.migrations import SPEC
from strongroom_gateway.repository import PgGatewayStore
from strongroom_platform import events
from strongroom_platform.events import new_meta
from strongroom_platform.testing import FakeClock
from strongroom_testing.fixtures import PgLogins

pytestmark = pytest.mark.integration


@pytest.fixture
async def pg_gw(pg_logins: PgLogins, clock: FakeClock) -> AsyncIterator[tuple[GatewayHarness, object]]:
    pool = await pg_logins.pool(SPEC)
    harness = GatewayHarness(clock, store=PgGatewayStore(pool), pack_target_bytes=1 << 20)
    await harness.start()
    try:
        yield harness, pool
    finally:
        await harness.stop()
        await pool.close()


async def test_backup_then_restore(pg_gw: tuple[GatewayHarness, object]) -> None:
    gw, pool = pg_gw
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    contents = [bytes([i]) * 300_000 for i in range(8)]
    response = await gw.upload(agent, "job-1", contents, compress=False)
    assert response.chunks_stored == 8
    again = await gw.stub.FindMissingChunks(
        gateway_pb2.FindMissingChunksRequest(job_id="job-1", chunk_ids=[chunk_id(key, c) for c in contents]),
        metadata=agent.md,
    )
    assert list(again.missing_chunk_ids) == []
    point = await gw.commit(agent, "job-1", [dir_entry(""), file_entry("big", key, contents)])
    assert point.total_bytes == 8 * 300_000

    rows = await pool.fetch("SELECT topic, payload FROM outbox ORDER BY id")  # type: ignore[attr-defined]
    topics = [r["topic"] for r in rows]
    assert topics == [events.AGENT_ENROLLED, events.POINT_CREATED]
    created = events_pb2.PointCreated.FromString(bytes(rows[1]["payload"]))
    assert created.point_id == point.point_id and created.file_count == 1

    await gw.request_restore(agent, "r-1", point.point_id)
    call = gw.stub.Connect(metadata=agent.md)
    while (await asyncio.wait_for(call.read(), 5)).run_restore.restore_job_id != "r-1":
        pass
    call.cancel()
    ids = [chunk_id(key, c) for c in contents]
    data = [
        r.data
        async for r in gw.stub.ReadChunks(
            gateway_pb2.ReadChunksRequest(restore_job_id="r-1", chunk_ids=ids), metadata=agent.md
        )
    ]
    assert data == contents
    # Two packs of chunks (1 MiB target), and the manifest's segments (format version 2) in a third.
    [segments] = await gw.segment_packs(point.point_id)
    chunk_packs = await pool.fetch("SELECT DISTINCT pack_id FROM chunks WHERE chunk_id = ANY($1)", ids)  # type: ignore[attr-defined]
    assert len(chunk_packs) == 2 and segments not in {r["pack_id"] for r in chunk_packs}
    assert await pool.fetchval("SELECT count(DISTINCT pack_id) FROM chunks") == 3  # type: ignore[attr-defined]


async def test_a_job_queued_while_its_instance_is_deactivated_ends_canceled(
    pg_gw: tuple[GatewayHarness, object], clock: FakeClock
) -> None:
    """The job's transaction reads the instance once, locked (ADR 0050 update): a deactivation that
    arrives meanwhile (another topic, so another partition worker) waits for it and then cancels the
    job, instead of missing a job committed after its scan and leaving it queued for good."""
    gw, pool = pg_gw
    agent = await gw.enrolled_agent("i-1")
    requested = events_pb2.JobRequested(
        meta=new_meta("test", clock.now()), account_id=agent.account_id, instance_id=agent.instance_id, job_id="job-1"
    )
    deactivated = events_pb2.InstanceDeactivated(
        meta=new_meta("test", clock.now()), account_id=agent.account_id, instance_id=agent.instance_id
    )
    async with gw.store.transaction() as tx:
        assert await handle_job_requested(requested, tx=tx, clock=clock) is not None
        deactivating = asyncio.create_task(gw.deliver(events.INSTANCE_DEACTIVATED, deactivated))
        await asyncio.sleep(0.5)
        assert not deactivating.done(), "the deactivation did not wait for the job's transaction"
    await asyncio.wait_for(deactivating, 10)
    state = await pool.fetchval("SELECT state FROM jobs WHERE job_id = 'job-1'")  # type: ignore[attr-defined]
    assert state == "finished"
