"""Repacking while a backup runs, on the real stack (ADR 0057): PostgreSQL as the gateway's own role,
versitygw with the gateway and reclaimer identities and Object Lock. A backup is running from before
the repack to after it, and its commit located its chunks in the source before the move; both the
point older than the repack and the backup's new point restore byte for byte, and once the source's
lock passed the reclaimer deletes it and the bucket holds fewer pack bytes."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from gateway_helpers import GatewayHarness, chunk_id, dir_entry, file_entry
from strongroom.agent.v1 import gateway_pb2
from strongroom_gateway.gc import collector
from strongroom_gateway.migrations import SPEC
from strongroom_gateway.points import packs as point_packs
from strongroom_gateway.repository import PgGatewayStore
from strongroom_testing.fixtures import PgLogins, S3Config
from test_gateway_gc import _restore
from test_gateway_gc_pg import _backup, _expire, _pack_of, _references
from test_gateway_gc_s3 import LOCK_SECONDS, Setup, _refused_while_locked, gateway_with_identities

pytestmark = pytest.mark.integration

RNG = random.Random(57)
BIG = RNG.randbytes(60_000)
SMALL = RNG.randbytes(3_000)
OTHER = RNG.randbytes(4_000)
NEW = RNG.randbytes(5_000)


@pytest.fixture
async def setup(pg_logins: PgLogins, s3_config: S3Config) -> AsyncIterator[Setup]:
    pool = await pg_logins.pool(SPEC)
    try:
        # Trusted time is PostgreSQL's own (no offset): the real time, which the server's locks follow.
        async with gateway_with_identities(s3_config, PgGatewayStore(pool)) as ready:
            yield ready
    finally:
        await pool.close()


async def _finish(gw: GatewayHarness, job_id: str) -> None:
    async with gw.store.transaction() as tx:
        job = await tx.get_job(job_id)
        assert job is not None
        await tx.update_job(dataclasses.replace(job, state="finished"))


async def _pack_bytes(setup: Setup) -> int:
    return sum([(await setup.gw.objects.stat(k)).size async for k in setup.gw.objects.list("packs/")])


async def test_a_backup_runs_through_a_repack_and_the_source_is_reclaimed(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = setup.gw
    agent = await gw.enrolled_agent("i-1")
    key = await gw.key_of("acct-a")
    day1 = await _backup(gw, agent, "job-1", {"big": [BIG], "small": [SMALL]})
    source = await _pack_of(gw, BIG)
    assert source is not None
    gw.clock.advance(hours=1)  # within the lock slack: the source's lock is not extended
    day2 = await _backup(gw, agent, "job-2", {"small": [SMALL], "other": [OTHER]})
    await _expire(gw, agent, day1)

    # The backup starts before the collection and asks about its chunks: SMALL is present (in the
    # source), NEW is missing and uploaded.
    await gw.request_backup(agent, "job-3")
    missing = await gw.stub.FindMissingChunks(
        gateway_pb2.FindMissingChunksRequest(job_id="job-3", chunk_ids=[chunk_id(key, SMALL), chunk_id(key, NEW)]),
        metadata=agent.md,
    )
    assert list(missing.missing_chunk_ids) == [chunk_id(key, NEW)]
    await gw.upload(agent, "job-3", [NEW])
    stored_before = await _pack_bytes(setup)

    original = point_packs.extend_pack_locks
    reports: list[collector.Report] = []

    async def located_then_repacked(account_id: str, packs: Iterable[str], *args: Any) -> None:
        await original(account_id, packs, *args)
        if not reports:  # the commit located SMALL in the source; the repack runs now
            assert source in set(packs)
            reports.append(await collector.collect(setup.deps()))

    monkeypatch.setattr(point_packs, "extend_pack_locks", located_then_repacked)
    entries = [dir_entry(""), file_entry("new", key, [NEW]), file_entry("small", key, [SMALL])]
    day3 = (await gw.commit(agent, "job-3", entries)).point_id
    monkeypatch.setattr(point_packs, "extend_pack_locks", original)
    [report] = reports
    # The source repacked; it and day 1's segment pack (day 1 expired) condemned.
    assert (report.packs_repacked, report.repacks_refused, report.packs_condemned) == (1, 0, 2)
    new = await _pack_of(gw, SMALL)
    assert new is not None and new != source
    assert new in await _references(gw, day3) and source not in await _references(gw, day3)
    await _finish(gw, "job-3")

    # The point older than the repack and the backup's point both restore byte for byte.
    assert await _restore(gw, agent, "r-1", day2) == {"small": SMALL, "other": OTHER}
    assert await _restore(gw, agent, "r-2", day3) == {"new": NEW, "small": SMALL}
    await _finish(gw, "r-1")
    await _finish(gw, "r-2")
    async with gw.store.transaction() as tx:
        [source_pack] = await tx.packs_locked_before("acct-a", [source], gw.clock.now().replace(year=2100))
    _refused_while_locked(setup, source_pack)

    await asyncio.sleep(LOCK_SECONDS + 1)
    report = await collector.collect(setup.deps())
    assert (report.packs_reclaimed, report.objects_deleted) == (2, 2)  # the source and day 1's segment pack
    assert source_pack.object_key not in [k async for k in gw.objects.list("packs/")]
    assert not [v async for v in gw.objects.list_versions(source_pack.object_key)]
    stored_after = await _pack_bytes(setup)
    print(f"pack bytes in the bucket: {stored_before} before the repack, {stored_after} after the reclaim")
    assert stored_after < stored_before - len(BIG) // 2
    assert await _restore(gw, agent, "r-3", day3) == {"new": NEW, "small": SMALL}
    assert await _restore(gw, agent, "r-4", day2) == {"small": SMALL, "other": OTHER}
