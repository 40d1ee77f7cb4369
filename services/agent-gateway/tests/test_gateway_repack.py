"""Repacking over the in-memory store (ADR 0042): a mostly-dead pack's live chunks move to a new pack
locked like its latest point, the source is reclaimed after its own lock, restores stay byte for
byte, and backups and restores running meanwhile are safe."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable
from typing import Any

import pytest
from gateway_helpers import GatewayHarness, chunk_id, dir_entry, file_entry, stamped
from strongroom.agent.v1 import gateway_pb2
from strongroom_gateway.gc import collector
from strongroom_gateway.gc.repack import RepackPolicy
from strongroom_gateway.points import packs as point_packs
from strongroom_platform.objectstore import ObjectLocked
from test_gateway_gc import _backup, _expire, _finish, _pack_keys, _restore

SAFETY = dt.timedelta(hours=1)
RNG = random.Random(42)
# Incompressible: the stored sizes are about the content's.
BIG = RNG.randbytes(40_000)
SMALL = RNG.randbytes(2_000)
OTHER = RNG.randbytes(3_000)


@pytest.fixture
def gw(trusted_gw: GatewayHarness) -> GatewayHarness:
    return trusted_gw


def _deps(gw: GatewayHarness) -> collector.Deps:
    return collector.Deps(gw.store, gw.objects, gw.objects, gw.keys, gw.clock, collector.Policy(safety=SAFETY))


async def _two_days(gw: GatewayHarness) -> tuple[str, str, str]:
    """Day 1 backs up BIG and SMALL (one pack); day 2 only SMALL and OTHER; day 1 expires.
    Returns (the first pack's id, the live point, the expired point).

    Each point's manifest segments are in a pack of their own only it references (``_backup``): the
    expired point's is measured (all dead) and condemned with the first pack, never repacked.
    """
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"big": [BIG], "small": [SMALL]})
    # The pack of the uploaded chunks (with manifest format version 2 its segments are in another).
    first = gw.store.state.chunks[("acct-a", chunk_id(await gw.key_of("acct-a"), BIG))].pack_id
    gw.clock.advance(days=1)
    live = await _backup(gw, agent, "job-2", {"small": [SMALL], "other": [OTHER]})
    await _expire(gw, agent, old)
    gw.clock.advance(hours=2)
    return first, live, old


async def test_a_mostly_dead_pack_is_repacked_and_reclaimed_after_its_lock(gw: GatewayHarness) -> None:
    first, live, old = await _two_days(gw)
    agent_key = await gw.key_of("acct-a")
    state = gw.store.state
    source = state.packs[first]

    [dead_segments] = await gw.segment_packs(old)
    report = await collector.collect(_deps(gw))
    # Measured: the first pack and the expired point's segment pack; the first repacked; both condemned.
    assert (report.packs_measured, report.packs_repacked, report.packs_condemned) == (2, 1, 2)
    assert state.gc.condemned.keys() == {first, dead_segments}
    [new] = [p for p in state.packs.values() if p.pack_id not in (first,) and p.created_at == gw.clock.now()]
    # The live chunk moved; the dead one stays in the source until it is reclaimed (ADR 0057);
    # references follow the move.
    assert state.chunks[("acct-a", chunk_id(agent_key, SMALL))].pack_id == new.pack_id
    assert state.chunks[("acct-a", chunk_id(agent_key, BIG))].pack_id == first
    assert new.pack_id in state.gc.point_packs[live] and first not in state.gc.point_packs[live]
    assert state.gc.repacked == {first: new.pack_id}
    assert new.size < source.size // 5
    # Locked like the latest point referencing its chunks (ADR 0010), in the store too.
    assert new.retain_until == state.points[live].retain_until
    with pytest.raises(ObjectLocked):
        await gw.objects.delete(new.object_key)

    agent = await gw.enrolled_agent("i-1")
    expected = {"small": SMALL, "other": OTHER}
    assert await _restore(gw, agent, "r-1", live) == expected
    _finish(gw, "r-1")  # (a running restore keeps the source: the last test)

    # The source goes once its own lock passed (it was extended by the second point); the expired
    # point's segment pack, never extended, before it.
    gw.clock.set(source.retain_until - dt.timedelta(minutes=1))
    await collector.collect(_deps(gw))
    assert state.gc.reclaimed.keys() == {dead_segments}
    gw.clock.set(max(source.retain_until, state.points[live].created_at) + dt.timedelta(days=1, minutes=1))
    report = await collector.collect(_deps(gw))
    assert report.packs_reclaimed >= 1 and first in state.gc.reclaimed
    assert ("acct-a", chunk_id(agent_key, BIG)) not in state.chunks
    assert source.object_key not in _pack_keys(gw) and new.object_key in _pack_keys(gw)
    assert await _restore(gw, agent, "r-2", live) == expected


async def test_a_pack_is_measured_once_per_expiry_and_a_mostly_live_one_is_kept(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"big": [BIG], "small": [SMALL]})
    gw.clock.advance(days=1)
    # BIG stays: the first pack is almost entirely live after the first point expires.
    live = await _backup(gw, agent, "job-2", {"big": [BIG]})
    await _expire(gw, agent, old)
    gw.clock.advance(hours=2)
    report = await collector.collect(_deps(gw))
    # The first pack (kept) and the expired point's segment pack (all dead: condemned, not repacked).
    assert (report.packs_measured, report.packs_repacked, report.packs_condemned) == (2, 0, 1)
    assert gw.store.state.gc.condemned.keys() == await gw.segment_packs(old)
    assert (await collector.collect(_deps(gw))).packs_measured == 0  # nothing expired since
    assert not gw.store.state.gc.repacked
    assert await _restore(gw, agent, "r-1", live) == {"big": BIG}


async def test_a_repack_while_a_backup_runs_and_the_backup_commits_after_it(gw: GatewayHarness) -> None:
    """ADR 0057: the function no longer waits for the account's backups."""
    first, live, _ = await _two_days(gw)
    agent = await gw.enrolled_agent("i-1")
    key = await gw.key_of("acct-a")
    await gw.request_backup(agent, "job-3")
    report = await collector.collect(_deps(gw))
    assert (report.packs_measured, report.packs_repacked, report.repacks_refused) == (2, 1, 0)
    new = gw.store.state.gc.repacked[first]
    entries = stamped("job-3", [dir_entry(""), file_entry("small", key, [SMALL])])
    point = (await gw.commit(agent, "job-3", entries)).point_id
    assert gw.store.state.gc.point_packs[point] == {new} | await gw.segment_packs(point)
    _finish(gw, "job-3")
    assert await _restore(gw, agent, "r-1", live) == {"small": SMALL, "other": OTHER}
    assert await _restore(gw, agent, "r-2", point) == {"small": SMALL}


async def test_a_backup_deduplicating_against_moved_and_dead_chunks(gw: GatewayHarness) -> None:
    """FindMissingChunks answered "present" before the repack; the commit comes after it. The dead
    chunk stayed in the source (ADR 0057), so the point keeps the source alive."""
    first, live, _ = await _two_days(gw)
    agent = await gw.enrolled_agent("i-1")
    key = await gw.key_of("acct-a")
    await gw.request_backup(agent, "job-3")
    present = await gw.stub.FindMissingChunks(
        gateway_pb2.FindMissingChunksRequest(job_id="job-3", chunk_ids=[chunk_id(key, BIG), chunk_id(key, SMALL)]),
        metadata=agent.md,
    )
    assert not present.missing_chunk_ids
    assert (await collector.collect(_deps(gw))).packs_repacked == 1
    new = gw.store.state.gc.repacked[first]

    entries = stamped("job-3", [dir_entry(""), file_entry("big", key, [BIG]), file_entry("small", key, [SMALL])])
    point = (await gw.commit(agent, "job-3", entries)).point_id
    assert gw.store.state.gc.point_packs[point] == {first, new} | await gw.segment_packs(point)
    _finish(gw, "job-3")
    # Condemned by the repack's collection, referenced again (kopia's undelete): past every lock,
    # the source stays while the point lives.
    assert first in gw.store.state.gc.condemned
    gw.clock.set(gw.store.state.packs[first].retain_until + dt.timedelta(days=1))
    await collector.collect(_deps(gw))
    assert first not in gw.store.state.gc.reclaimed
    assert await _restore(gw, agent, "r-1", point) == {"big": BIG, "small": SMALL}


async def test_a_commit_that_located_its_chunks_before_a_repack_records_the_new_pack(
    gw: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race ADR 0057 closes: chunks located in the source, the repack, then the record."""
    first, live, _ = await _two_days(gw)
    agent = await gw.enrolled_agent("i-1")
    key = await gw.key_of("acct-a")
    await gw.request_backup(agent, "job-3")
    gw.clock.advance(days=2)  # the new pack, locked like the live point, is then short of this one's lock
    original = point_packs.extend_pack_locks
    reports: list[collector.Report] = []
    extended: list[set[str]] = []

    async def located_then_repacked(account_id: str, packs: Iterable[str], *args: Any) -> None:
        await original(account_id, packs, *args)
        if not reports:  # once: after the chunks were located, before the point is recorded
            extended.append(set(packs))
            reports.append(await collector.collect(_deps(gw)))

    monkeypatch.setattr(point_packs, "extend_pack_locks", located_then_repacked)
    entries = stamped("job-3", [dir_entry(""), file_entry("small", key, [SMALL])])
    point = (await gw.commit(agent, "job-3", entries)).point_id
    [report] = reports
    assert report.packs_repacked == 1
    # Located in the source, with the segments this commit wrote.
    segments = await gw.segment_packs(point)
    assert extended == [{first} | segments]
    state = gw.store.state
    new = state.gc.repacked[first]
    # Located again after the move: the point references where its chunks are now, not the source.
    assert state.gc.point_packs[point] == {new} | segments
    # The new pack was locked like the older points; the commit extended it to its own point's.
    assert state.packs[new].retain_until >= state.points[point].retain_until
    _finish(gw, "job-3")
    assert await _restore(gw, agent, "r-1", point) == {"small": SMALL}
    assert await _restore(gw, agent, "r-2", live) == {"small": SMALL, "other": OTHER}
    async with gw.store.transaction() as tx:
        assert await tx.hold_packs("acct-a", [first]) == []


async def test_a_restore_running_before_the_condemnation_keeps_the_source(gw: GatewayHarness) -> None:
    first, live, _ = await _two_days(gw)
    agent = await gw.enrolled_agent("i-1")
    await gw.request_restore(agent, "r-1", live, conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE)
    assert (await collector.collect(_deps(gw))).packs_repacked == 1
    source = gw.store.state.packs[first]
    gw.clock.set(source.retain_until + dt.timedelta(days=2))
    assert first not in gw.store.state.gc.reclaimed
    report = await collector.collect(_deps(gw))
    assert first not in gw.store.state.gc.reclaimed and report.failures == 0
    _finish(gw, "r-1")
    await collector.collect(_deps(gw))
    assert first in gw.store.state.gc.reclaimed


async def test_measures_in_batches_bounded_by_chunk_ids(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    big2, small2 = RNG.randbytes(30_000), RNG.randbytes(1_500)
    day1 = await _backup(gw, agent, "job-1", {"big": [BIG], "small": [SMALL]})
    gw.clock.advance(days=1)
    day2 = await _backup(gw, agent, "job-2", {"big": [big2], "small": [SMALL], "small2": [small2]})
    gw.clock.advance(days=1)
    live = await _backup(gw, agent, "job-3", {"small": [SMALL], "small2": [small2]})
    await _expire(gw, agent, day1)
    await _expire(gw, agent, day2)
    gw.clock.advance(hours=2)
    key = await gw.key_of("acct-a")
    chunk_packs = {gw.store.state.chunks[("acct-a", chunk_id(key, c))].pack_id for c in (BIG, big2)}
    dead_segments = await gw.segment_packs(day1) | await gw.segment_packs(day2)
    # One pack's chunk ids at a time: four measures (the two chunk packs and the expired points' two
    # segment packs, all dead), two moves, each of one source.
    policy = collector.Policy(safety=SAFETY, repack=RepackPolicy(scan_chunks=1))
    deps = collector.Deps(gw.store, gw.objects, gw.objects, gw.keys, gw.clock, policy)
    report = await collector.collect(deps)
    assert (report.packs_measured, report.packs_repacked) == (4, 2)
    assert gw.store.state.gc.repacked.keys() == chunk_packs and len(dead_segments) == 2
    assert len(set(gw.store.state.gc.repacked.values())) == 2
    assert await _restore(gw, agent, "r-1", live) == {"small": SMALL, "small2": small2}
