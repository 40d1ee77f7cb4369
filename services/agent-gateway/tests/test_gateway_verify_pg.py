"""Verification over the PostgreSQL store (real server): the same runs as with the fake, through SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gateway_helpers import GatewayHarness, chunk_id
from strongroom_gateway.migrations import SPEC
from strongroom_gateway.verify.repository import PgVerifyStore
from strongroom_gateway.verify.worker import schedule_sample
from strongroom_platform.testing import FakeClock
from strongroom_testing.fixtures import PgLogins
from test_gateway_verify import (
    CONTENT,
    backed_up,
    check_verification_pages,
    deps,
    flip,
    queue,
    run_next,
    run_next_with,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def pgw(clock: FakeClock, pg_logins: PgLogins) -> AsyncIterator[GatewayHarness]:
    pool = await pg_logins.pool(SPEC)  # as the gateway's own role (ADR 0031)
    harness = GatewayHarness(clock, store=PgVerifyStore(pool), pack_target_bytes=5000)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
        await pool.close()


async def test_damage_is_found_listed_and_counted_in_recoverability(pgw: GatewayHarness) -> None:
    _, point_id = await backed_up(pgw)
    await queue(pgw, "point", point_id)
    clean = await run_next(pgw)
    assert clean.state == "clean" and clean.progress.packs_checked == 3
    pgw.clock.advance(60)

    await flip(pgw, CONTENT["c"])
    await queue(pgw, "instance", "i-1")
    done = await run_next(pgw)
    assert done.state == "damaged"
    assert (done.progress.points_total, done.progress.damaged_files, done.progress.damaged_packs) == (1, 1, 1)
    key = await pgw.key_of("acct-a")
    async with pgw.store.transaction() as tx:
        [entry] = await tx.damaged_files(done.verification_id, 10)
        [pack] = await tx.damaged_packs(done.verification_id, 10)
        [status] = await tx.recoverability("acct-a", "i-1")
        listed = await tx.list_verifications("acct-a", "i-1", 10)
        assert await tx.list_verifications("acct-b", None, 10) == []
    assert (entry.point_id, entry.path) == (point_id, "cd.bin")
    assert entry.reason == f"chunk {chunk_id(key, CONTENT['c']).hex()} of this file is damaged in storage" + (
        " (authentication failed)"
    )
    assert "authentication failed" in pack.reason
    assert status.last_verified_point_id == point_id
    assert status.last_verified_at == pgw.clock.now()
    assert status.damaged_files == 1 and status.damaged_points == 1
    assert [v.verification_id for v in listed] == [done.verification_id]  # the point's run has no instance id


async def test_leases_and_the_daily_sample(pgw: GatewayHarness) -> None:
    await backed_up(pgw)
    assert await schedule_sample(pgw.store, pgw.clock) is not None
    assert await schedule_sample(pgw.store, pgw.clock) is None
    first = deps(pgw, "gw-1")
    now = pgw.clock.now()
    async with pgw.store.transaction() as tx:
        claimed = await tx.claim_verification("gw-1", now, now + first.lease)
        assert claimed is not None and claimed.scope == "sample"
        assert await tx.claim_verification("gw-2", now, now + first.lease) is None
    pgw.clock.advance(first.lease.total_seconds() + 1)
    # Three packs of chunks and one of the manifest's segments (format version 2).
    done = await run_next_with(pgw, cover_days=4)  # owner gw-1 again, but as a new claim after expiry
    assert done.state == "clean" and done.progress.packs_checked == 1
    async with pgw.store.transaction() as tx:
        assert await tx.count_packs() == 4
        # the checked pack goes to the back of the queue
        order = await tx.least_recently_checked_packs(4)
        checked = await tx.damaged_packs(done.verification_id, 10)
    assert checked == []
    assert len(set(order)) == 4


async def test_verifications_are_listed_in_pages(pgw: GatewayHarness) -> None:
    await check_verification_pages(pgw.store, pgw.clock.now())
