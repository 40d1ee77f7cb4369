"""Garbage collection on PostgreSQL, as the gateway's own role (ADR 0041): trusted time decides the
locks, ``gateway.reclaim_pack`` is the only way chunk rows go, and a commit racing the sweep either
keeps the pack or fails. Repacking (ADR 0042): ``gateway.repack_pack`` is the only way a chunk row
changes pack, refuses a move that the index contradicts, and the repacked point restores byte for
byte. Moves while a backup runs (ADR 0057): a commit that located its chunks before a move records
the move's new pack, locked as long as the point."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any

import asyncpg
import pytest
from gateway_helpers import Agent, GatewayHarness, chunk_id, dir_entry, file_entry, meta, stamped
from strongroom.events.v1 import events_pb2
from strongroom_gateway.gc import collector
from strongroom_gateway.migrations import SPEC
from strongroom_gateway.points import packs as point_packs
from strongroom_gateway.ports import ChunkLocation, Pack
from strongroom_gateway.repository import PgGatewayStore
from strongroom_platform import events
from strongroom_platform.pg_roles import SERVICE_ROLES
from strongroom_platform.testing import FakeClock
from strongroom_platform.trusted_time import set_clock_offset
from strongroom_testing.fixtures import PgLogins
from test_gateway_gc import _restore

pytestmark = pytest.mark.integration

SAFETY = dt.timedelta(hours=1)


class Stack:
    """A gateway on the test database, its clock and the trusted time moved together."""

    def __init__(self, gw: GatewayHarness, owner: str, start: dt.datetime) -> None:
        self.gw = gw
        self.owner = owner
        self.start = start

    async def advance(self, **delta: float) -> None:
        self.gw.clock.advance(**delta)
        conn = await asyncpg.connect(self.owner)
        try:
            await set_clock_offset(conn, self.gw.clock.now() - self.start)
        finally:
            await conn.close()

    def deps(self) -> collector.Deps:
        gw = self.gw
        return collector.Deps(gw.store, gw.objects, gw.objects, gw.keys, gw.clock, collector.Policy(safety=SAFETY))


@pytest.fixture
async def stack(pg_logins: PgLogins) -> AsyncIterator[Stack]:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    pool = await pg_logins.pool(SPEC)
    gw = GatewayHarness(FakeClock(start), store=PgGatewayStore(pool))
    await gw.start()
    try:
        yield Stack(gw, pg_logins.owner, start)
    finally:
        await gw.stop()
        await pool.close()


async def _backup(gw: GatewayHarness, agent: Agent, job_id: str, files: dict[str, list[bytes]]) -> str:
    """One backup job; its point's segments are in a pack of their own only it references (``stamped``)."""
    await gw.request_backup(agent, job_id)
    key = await gw.key_of(agent.account_id)
    await gw.upload(agent, job_id, [c for chunks in files.values() for c in chunks])
    entries = stamped(job_id, [dir_entry("")] + [file_entry(p, key, c) for p, c in sorted(files.items())])
    point_id = (await gw.commit(agent, job_id, entries)).point_id
    async with gw.store.transaction() as tx:
        job = await tx.get_job(job_id)
        assert job is not None
        await tx.update_job(dataclasses.replace(job, state="finished"))  # the agent reported its end
    return point_id


async def _expire(gw: GatewayHarness, agent: Agent, point_id: str) -> None:
    async with gw.store.transaction() as tx:
        point = await tx.get_point(point_id)
    assert point is not None
    await gw.deliver(
        events.VERSION_EXPIRED,
        events_pb2.VersionExpired(
            meta=meta(),
            account_id=agent.account_id,
            instance_id=agent.instance_id,
            version_id=point.version_id,
            point_ids=[point_id],
        ),
    )


async def _chunk_rows(gw: GatewayHarness, pack_id: str) -> int:
    async with gw.store.transaction() as tx:
        return int(await tx._conn.fetchval("SELECT count(*) FROM chunks WHERE pack_id = $1", pack_id))


async def _packs(gw: GatewayHarness) -> list[tuple[str, str]]:
    async with gw.store.transaction() as tx:
        rows = await tx._conn.fetch("SELECT pack_id, object_key FROM packs ORDER BY created_at")
    return [(r["pack_id"], r["object_key"]) for r in rows]


async def _pack_of(gw: GatewayHarness, content: bytes) -> str | None:
    """The pack holding the uploaded ``content`` (a pack of chunks, not of manifest segments)."""
    key = await gw.key_of("acct-a")
    async with gw.store.transaction() as tx:
        found = await tx.find_chunks("acct-a", [chunk_id(key, content)])
    return next(iter(found.values())).pack_id if found else None


async def test_reclaim_follows_the_trusted_time_and_the_references(stack: Stack) -> None:
    gw = stack.gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"a": [b"alpha" * 100], "b": [b"beta" * 100]})
    await stack.advance(days=1)
    live = await _backup(gw, agent, "job-2", {"c": [b"gamma" * 100]})
    old_pack, live_pack = await _pack_of(gw, b"alpha" * 100), await _pack_of(gw, b"gamma" * 100)
    old_segments, live_segments = await gw.segment_packs(old), await gw.segment_packs(live)
    keys = dict(await _packs(gw))
    assert len(keys) == 4 and len(old_segments) == len(live_segments) == 1
    assert old_pack is not None and live_pack is not None

    await _expire(gw, agent, old)
    await _expire(gw, agent, old)  # delivered twice: recorded once
    await stack.advance(hours=2)
    report = await collector.collect(stack.deps())
    # The chunks' and the segments' packs of the expired point, locked for 31 days.
    assert (report.packs_condemned, report.packs_reclaimed) == (2, 0)

    # The function itself refuses a locked pack, whatever the caller asks.
    async with gw.store.transaction() as tx:
        assert await tx.reclaim_pack(old_pack, dt.timedelta(0)) is False
    assert await _chunk_rows(gw, old_pack) == 2

    await stack.advance(days=31)
    report = await collector.collect(stack.deps())
    assert (report.packs_reclaimed, report.objects_deleted, report.points_reclaimed) == (2, 2, 1)
    assert await _chunk_rows(gw, old_pack) == 0 and await _chunk_rows(gw, live_pack) == 1
    assert {k async for k in gw.objects.list("packs/")} == {keys[p] for p in {live_pack} | live_segments}
    assert keys[old_pack] != keys[live_pack] and live != old


async def test_a_commit_holding_the_lock_keeps_its_pack(stack: Stack, pg_logins: PgLogins) -> None:
    """The race, with real locks: the sweep waits for the commit, then sees the new reference."""
    gw = stack.gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"a": [b"alpha" * 100]})
    await _expire(gw, agent, old)
    await stack.advance(days=32)
    assert (await collector.collect(stack.deps())).packs_condemned == 2  # the chunks' and the segments' packs
    pack_id = await _pack_of(gw, b"alpha" * 100)
    assert pack_id is not None
    await stack.advance(hours=2)

    async with gw.store.transaction() as commit:
        assert await commit.hold_packs("acct-a", [pack_id]) == []
        async with gw.store.transaction() as tx:
            point = await tx.get_point(old)
        assert point is not None
        await commit.insert_point(dataclasses.replace(point, point_id="p-new", job_id="job-1", mount_point="/data"))
        await commit.record_point_packs("p-new", [pack_id])

        async def sweep() -> bool:
            async with gw.store.transaction() as tx:
                return await tx.reclaim_pack(pack_id, SAFETY)

        task = asyncio.create_task(sweep())
        await asyncio.sleep(0.5)
        assert not task.done()  # waits for the commit's lock
    assert await task is False
    assert await _chunk_rows(gw, pack_id) == 1


async def test_only_the_function_drops_chunk_rows_and_only_the_gateway_may_call_it(
    stack: Stack, pg_logins: PgLogins
) -> None:
    gw = stack.gw
    agent = await gw.enrolled_agent("i-1")
    await _backup(gw, agent, "job-1", {"a": [b"alpha" * 100]})
    pack_id = await _pack_of(gw, b"alpha" * 100)
    assert pack_id is not None
    gateway = await asyncpg.connect(pg_logins.service("gateway"))
    catalog = await asyncpg.connect(pg_logins.service("catalog"))
    try:
        for statement in (
            "DELETE FROM gateway.chunks",
            "DELETE FROM gateway.point_packs",
            "DELETE FROM gateway.point_expirations",
            "UPDATE gateway.pack_reclaims SET reclaimed_at = now()",
            f"INSERT INTO gateway.pack_reclaims (pack_id, reclaimed_at) VALUES ('{pack_id}', now())",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await gateway.execute(statement)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await catalog.fetchval("SELECT gateway.reclaim_pack($1, interval '0')", pack_id)
        # Not condemned (a live point references it): the gateway's own call changes nothing.
        assert await gateway.fetchval("SELECT gateway.reclaim_pack($1, interval '0')", pack_id) is False
        with pytest.raises(asyncpg.InvalidParameterValueError):
            await gateway.fetchval("SELECT gateway.reclaim_pack($1, interval '-1 hour')", pack_id)
    finally:
        await gateway.close()
        await catalog.close()
    assert SERVICE_ROLES["gateway"] != SERVICE_ROLES["catalog"]


# Repacking (ADR 0042).

RNG = random.Random(7)
BIG = RNG.randbytes(40_000)
SMALL = RNG.randbytes(2_000)
OTHER = RNG.randbytes(3_000)


async def _two_days(stack: Stack) -> tuple[str, str]:
    """Day 1: BIG and SMALL in one pack; day 2: SMALL and OTHER; day 1 expired. (first pack, live point)."""
    gw = stack.gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"big": [BIG], "small": [SMALL]})
    first = await _pack_of(gw, BIG)  # (the point's segments are in a pack of their own)
    assert first is not None
    await stack.advance(days=1)
    live = await _backup(gw, agent, "job-2", {"small": [SMALL], "other": [OTHER]})
    await _expire(gw, agent, old)
    await stack.advance(hours=2)
    return first, live


async def test_repack_moves_the_live_rows_and_the_point_restores(stack: Stack) -> None:
    gw = stack.gw
    first, live = await _two_days(stack)
    report = await collector.collect(stack.deps())
    # Measured: the first pack and the expired point's segment pack (all dead); the first repacked; both condemned.
    assert (report.packs_measured, report.packs_repacked, report.packs_condemned) == (2, 1, 2)
    new = await _pack_of(gw, SMALL)
    assert new is not None and new != first
    assert await _pack_of(gw, BIG) == first  # dead: leaves the index with its pack (ADR 0057)
    async with gw.store.transaction() as tx:
        conn = tx._conn
        references = {
            r["pack_id"] for r in await conn.fetch("SELECT pack_id FROM point_packs WHERE point_id = $1", live)
        }
        lock = await conn.fetchval("SELECT retain_until FROM packs WHERE pack_id = $1", new)
        point_lock = await conn.fetchval("SELECT retain_until FROM points WHERE point_id = $1", live)
        assert await tx.hold_packs("acct-a", [first, new]) == []
        assert await conn.fetchval("SELECT epoch FROM pack_repacks WHERE old_pack_id = $1", first) == 1
        assert await tx.gc_epoch("acct-a") == 1
        assert await tx.pack_successors("acct-a", [first], 0) == {new}
        assert await tx.pack_successors("acct-a", [first], 1) == set()
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
    await gw.request_backup(agent, "job-3")  # a backup running does not stop the repack (ADR 0057)
    async with gw.store.transaction() as tx:
        assert await tx.repack(staged("e"), [first], [live], [moved(small)]) is True
    assert await _pack_of(gw, SMALL) == "e" * 64 and await _pack_of(gw, BIG) == first
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


# Generational moves (ADR 0042, update of 2026-12-06).

BIG2 = RNG.randbytes(40_000)


async def _two_live_days(stack: Stack) -> tuple[str, str, str]:
    """Day 1: BIG and SMALL in one pack; day 2: BIG2 and SMALL; nothing expired. (first pack, day 1, day 2)."""
    gw = stack.gw
    agent = await gw.enrolled_agent("i-1")
    day1 = await _backup(gw, agent, "job-1", {"big": [BIG], "small": [SMALL]})
    first = await _pack_of(gw, BIG)  # (the point's segments are in a pack of their own)
    assert first is not None
    await stack.advance(days=1)
    day2 = await _backup(gw, agent, "job-2", {"big": [BIG2], "small": [SMALL]})
    await stack.advance(hours=2)
    return first, day1, day2


async def _references(gw: GatewayHarness, point_id: str) -> set[str]:
    async with gw.store.transaction() as tx:
        rows = await tx._conn.fetch("SELECT pack_id FROM point_packs WHERE point_id = $1", point_id)
    return {r["pack_id"] for r in rows}


async def test_a_move_takes_the_hot_rows_only_and_new_points_leave_the_source(stack: Stack) -> None:
    gw = stack.gw
    first, day1, day2 = await _two_live_days(stack)
    report = await collector.collect(stack.deps())
    assert (report.packs_measured, report.packs_moved, report.packs_condemned) == (1, 1, 0)
    new = await _pack_of(gw, SMALL)
    assert new is not None and new != first and await _pack_of(gw, BIG) == first
    assert await _references(gw, day1) >= {first, new} and await _references(gw, day2) >= {first, new}
    async with gw.store.transaction() as tx:
        conn = tx._conn
        assert await conn.fetchval("SELECT count(*) FROM pack_moves WHERE old_pack_id = $1", first) == 1
        lock = await conn.fetchval("SELECT retain_until FROM packs WHERE pack_id = $1", new)
        assert lock == await conn.fetchval("SELECT retain_until FROM points WHERE point_id = $1", day2)
        assert await tx.hold_packs("acct-a", [first, new]) == []  # the source still holds live rows
    assert (await collector.collect(stack.deps())).packs_measured == 0  # measured against day 2 already
    agent = await gw.enrolled_agent("i-1")
    assert await _restore(gw, agent, "r-1", day1) == {"big": BIG, "small": SMALL}
    await stack.advance(days=1)
    day3 = await _backup(gw, agent, "job-3", {"small": [SMALL]})
    assert await _references(gw, day3) == {new} | await gw.segment_packs(day3)
    assert await _restore(gw, agent, "r-2", day3) == {"small": SMALL}


async def test_move_chunks_refuses_what_the_index_contradicts(stack: Stack) -> None:
    gw = stack.gw
    first, _, day2 = await _two_live_days(stack)
    key = await gw.key_of("acct-a")
    async with gw.store.transaction() as tx:
        [small] = (await tx.find_chunks("acct-a", [chunk_id(key, SMALL)])).values()
        [source] = await tx.packs_locked_before("acct-a", [first], gw.clock.now().replace(year=2100))
        point = await tx.get_point(day2)
    assert point is not None

    def staged(name: str, retain_until: dt.datetime = point.retain_until) -> Pack:
        return dataclasses.replace(
            source,
            pack_id=name * 64,
            object_key=f"packs/acct-a/{name}",
            created_at=gw.clock.now(),
            retain_until=retain_until,
        )

    moved = dataclasses.replace(small, offset=5)
    cases = [
        ("a", [first], [moved], point.retain_until - dt.timedelta(hours=1)),  # locked shorter than day 2
        ("b", [first], [], point.retain_until),  # nothing to move
        ("c", ["c" * 64], [moved], point.retain_until),  # the new pack as its own source
    ]
    for name, sources, chunks, lock in cases:
        async with gw.store.transaction() as tx:
            assert await tx.move_chunks(staged(name, lock), sources, chunks) is False, name
    assert await _pack_of(gw, SMALL) == first

    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-3")  # a backup running does not stop the move (ADR 0057)
    async with gw.store.transaction() as tx:
        assert await tx.move_chunks(staged("e"), [first], [moved]) is True
    assert await _pack_of(gw, SMALL) == "e" * 64 and await _pack_of(gw, BIG) == first
    async with gw.store.transaction() as tx:  # SMALL no longer lies in the source
        assert await tx.move_chunks(staged("f"), [first], [moved]) is False


async def test_only_move_chunks_records_moves_and_only_the_gateway_may_call_it(
    stack: Stack, pg_logins: PgLogins
) -> None:
    gw = stack.gw
    first, _, _ = await _two_live_days(stack)
    gateway = await asyncpg.connect(pg_logins.service("gateway"))
    catalog = await asyncpg.connect(pg_logins.service("catalog"))
    try:
        for statement in (
            f"INSERT INTO gateway.pack_moves VALUES ('{first}', '{first}', 'acct-a', now())",
            "UPDATE gateway.pack_heat SET hot_bytes = 0",
            "DELETE FROM gateway.pack_heat",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await gateway.execute(statement)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await catalog.fetchval("SELECT gateway.move_chunks($1)", first)
        assert await gateway.fetchval("SELECT gateway.move_chunks($1)", first) is False  # nothing staged
    finally:
        await gateway.close()
        await catalog.close()
    assert await _pack_of(gw, SMALL) == first


async def test_a_commit_racing_a_move_locates_again_and_locks_the_new_pack(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 0057 on PostgreSQL: the backup's chunks are located in the source, the move runs (the
    backup still running), then the commit sees the move, locates its chunks again and records the
    new pack, whose lock it extended; every point restores byte for byte."""
    gw = stack.gw
    first, day1, day2 = await _two_live_days(stack)
    agent = await gw.enrolled_agent("i-1")
    key = await gw.key_of("acct-a")
    await gw.request_backup(agent, "job-3")
    await stack.advance(days=2)  # the new pack, locked like day 2, is then short of day 3's lock
    big3 = RNG.randbytes(40_000)
    await gw.upload(agent, "job-3", [big3])
    original = point_packs.extend_pack_locks
    reports: list[collector.Report] = []

    async def located_then_moved(account_id: str, packs: Iterable[str], *args: Any) -> None:
        await original(account_id, packs, *args)
        if not reports:
            assert first in set(packs)
            reports.append(await collector.collect(stack.deps()))

    monkeypatch.setattr(point_packs, "extend_pack_locks", located_then_moved)
    entries = [dir_entry(""), file_entry("big", key, [big3]), file_entry("small", key, [SMALL])]
    day3 = (await gw.commit(agent, "job-3", entries)).point_id
    [report] = reports
    assert (report.packs_moved, report.repacks_refused) == (1, 0)
    new = await _pack_of(gw, SMALL)
    assert new is not None and new != first
    references = await _references(gw, day3)
    assert new in references and first not in references  # located again after the move
    async with gw.store.transaction() as tx:
        conn = tx._conn
        point_lock = await conn.fetchval("SELECT retain_until FROM points WHERE point_id = $1", day3)
        new_lock = await conn.fetchval(
            "SELECT greatest(p.retain_until, (SELECT max(r.retain_until) FROM pack_retentions r"
            " WHERE r.pack_id = p.pack_id)) FROM packs p WHERE p.pack_id = $1",
            new,
        )
    assert new_lock == point_lock
    for job, point_id, big in (("r-1", day1, BIG), ("r-2", day2, BIG2), ("r-3", day3, big3)):
        assert await _restore(gw, agent, job, point_id) == {"big": big, "small": SMALL}
