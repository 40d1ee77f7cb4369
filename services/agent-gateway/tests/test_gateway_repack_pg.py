"""Repacking on PostgreSQL as the gateway's own role (ADR 0042): ``gateway.repack_pack`` is the only
way a chunk row changes pack, refuses a move that the index or the running backups contradict, and
the repacked point restores byte for byte."""

from __future__ import annotations

import dataclasses
import random

import asyncpg
import pytest
from gateway_helpers import GatewayHarness, chunk_id
from strongroom_gateway.gc import collector
from strongroom_gateway.ports import ChunkLocation, Pack
from strongroom_platform.pg_roles import SERVICE_ROLES
from strongroom_testing.fixtures import PgLogins
from test_gateway_gc import _restore
from test_gateway_gc_pg import Stack, _backup, _expire, _packs, stack  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

RNG = random.Random(7)
BIG = RNG.randbytes(40_000)
SMALL = RNG.randbytes(2_000)
OTHER = RNG.randbytes(3_000)


async def _two_days(stack: Stack) -> tuple[str, str]:
    """Day 1: BIG and SMALL in one pack; day 2: SMALL and OTHER; day 1 expired. (first pack, live point)."""
    gw = stack.gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"big": [BIG], "small": [SMALL]})
    [(first, _)] = await _packs(gw)
    await stack.advance(days=1)
    live = await _backup(gw, agent, "job-2", {"small": [SMALL], "other": [OTHER]})
    await _expire(gw, agent, old)
    await stack.advance(hours=2)
    return first, live


async def _pack_of(gw: GatewayHarness, content: bytes) -> str | None:
    key = await gw.key_of("acct-a")
    async with gw.store.transaction() as tx:
        found = await tx.find_chunks("acct-a", [chunk_id(key, content)])
    return next(iter(found.values())).pack_id if found else None


async def test_repack_moves_the_live_rows_and_the_point_restores(stack: Stack) -> None:
    gw = stack.gw
    first, live = await _two_days(stack)
    report = await collector.collect(stack.deps())
    assert (report.packs_measured, report.packs_repacked, report.packs_condemned) == (1, 1, 1)
    new = await _pack_of(gw, SMALL)
    assert new is not None and new != first
    assert await _pack_of(gw, BIG) is None  # dead: left the index with its pack
    async with gw.store.transaction() as tx:
        conn = tx._conn
        references = {
            r["pack_id"] for r in await conn.fetch("SELECT pack_id FROM point_packs WHERE point_id = $1", live)
        }
        lock = await conn.fetchval("SELECT retain_until FROM packs WHERE pack_id = $1", new)
        point_lock = await conn.fetchval("SELECT retain_until FROM points WHERE point_id = $1", live)
        assert await tx.hold_packs("acct-a", [first, new]) == [first]
    assert first not in references and new in references
    assert lock == point_lock
    agent = await gw.enrolled_agent("i-1")
    assert await _restore(gw, agent, "r-1", live) == {"small": SMALL, "other": OTHER}


async def test_the_function_refuses_what_the_index_contradicts(stack: Stack) -> None:
    gw = stack.gw
    first, live = await _two_days(stack)
    key = await gw.key_of("acct-a")
    async with gw.store.transaction() as tx:
        locations = await tx.find_chunks("acct-a", [chunk_id(key, SMALL), chunk_id(key, OTHER)])
        [source] = [p for p in await tx.packs_locked_before("acct-a", [first], gw.clock.now().replace(year=2100))]
    small, other = locations[chunk_id(key, SMALL)], locations[chunk_id(key, OTHER)]

    def staged(name: str) -> Pack:
        # The function never reads the object: a row is enough to test what it checks.
        return dataclasses.replace(
            source, pack_id=name * 64, object_key=f"packs/acct-a/{name}", created_at=gw.clock.now()
        )

    def moved(location: ChunkLocation) -> ChunkLocation:
        return dataclasses.replace(location, offset=5, length=location.length)

    cases = [
        ("a", [first], [], [moved(small)]),  # the live point referencing the source was not scanned
        ("b", [first], [live], [moved(other)]),  # OTHER is not in the source
        ("c", [first], [live], []),  # nothing to move
    ]
    for name, sources, scanned, chunks in cases:
        async with gw.store.transaction() as tx:
            assert await tx.repack(staged(name), sources, scanned, chunks) is False, name
    assert await _pack_of(gw, SMALL) == first and await _pack_of(gw, BIG) == first

    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-3")  # a backup running: no move now
    async with gw.store.transaction() as tx:
        assert await tx.repack(staged("d"), [first], [live], [moved(small)]) is False
    async with gw.store.transaction() as tx:
        job = await tx.get_job("job-3")
        assert job is not None
        await tx.update_job(dataclasses.replace(job, state="finished"))
    async with gw.store.transaction() as tx:
        assert await tx.repack(staged("e"), [first], [live], [moved(small)]) is True
    assert await _pack_of(gw, SMALL) == "e" * 64 and await _pack_of(gw, BIG) is None
    async with gw.store.transaction() as tx:  # a source is repacked once
        assert await tx.repack(staged("f"), [first], [live], [moved(small)]) is False


async def test_only_the_function_moves_rows_and_only_the_gateway_may_call_it(stack: Stack, pg_logins: PgLogins) -> None:
    gw = stack.gw
    first, _ = await _two_days(stack)
    gateway = await asyncpg.connect(pg_logins.service("gateway"))
    catalog = await asyncpg.connect(pg_logins.service("catalog"))
    try:
        for statement in (
            "UPDATE gateway.chunks SET pack_id = pack_id",
            "DELETE FROM gateway.point_packs",
            f"INSERT INTO gateway.pack_repacks VALUES ('{first}', '{first}', 'acct-a', now())",
            "DELETE FROM gateway.repack_chunks",
            "UPDATE gateway.pack_liveness SET live_bytes = 0",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await gateway.execute(statement)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await catalog.fetchval("SELECT gateway.repack_pack($1)", first)
        # Nothing staged for it: the gateway's own call changes nothing.
        assert await gateway.fetchval("SELECT gateway.repack_pack($1)", first) is False
    finally:
        await gateway.close()
        await catalog.close()
    assert await _pack_of(gw, BIG) == first
    assert SERVICE_ROLES["gateway"] != SERVICE_ROLES["catalog"]
