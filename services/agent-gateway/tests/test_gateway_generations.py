"""Generational moves over the in-memory store (ADR 0042, update of 2026-12-06): the chunks the newest
point uses leave a pack mostly used by older points, the day after it was written; new points then
reference the new pack only, so the source's lock stops moving and it goes with its last older
point; restores stay byte for byte, and backups and restores running meanwhile are safe."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable
from typing import Any

import pytest
from gateway_helpers import GatewayHarness, chunk_id, dir_entry, file_entry
from strongroom.agent.v1 import gateway_pb2
from strongroom_gateway.gc import collector
from strongroom_gateway.gc.repack import RepackPolicy
from strongroom_gateway.points import packs as point_packs
from strongroom_platform.objectstore import ObjectLocked
from test_gateway_gc import _backup, _chunk_pack, _expire, _finish, _pack_keys, _restore

SAFETY = dt.timedelta(hours=1)
RNG = random.Random(43)
# Incompressible: the stored sizes are about the content's.
BIG = RNG.randbytes(40_000)
BIG2 = RNG.randbytes(40_000)
SMALL = RNG.randbytes(2_000)
BIG3 = RNG.randbytes(40_000)


@pytest.fixture
def gw(trusted_gw: GatewayHarness) -> GatewayHarness:
    return trusted_gw


def _deps(gw: GatewayHarness, **policy: float | dt.timedelta) -> collector.Deps:
    repack = RepackPolicy(**policy)  # type: ignore[arg-type]
    return collector.Deps(
        gw.store, gw.objects, gw.objects, gw.keys, gw.clock, collector.Policy(safety=SAFETY, repack=repack)
    )


async def _two_days(gw: GatewayHarness) -> tuple[str, str, str]:
    """Day 1 backs up BIG and SMALL (one pack); day 2 BIG2 (replacing BIG) and SMALL. Nothing expired.
    Returns (the first pack's id, day 1's point, day 2's point)."""
    agent = await gw.enrolled_agent("i-1")
    day1 = await _backup(gw, agent, "job-1", {"big": [BIG], "small": [SMALL]})
    first = (await _chunk_pack(gw, BIG)).pack_id  # (its segments are in a pack of their own)
    gw.clock.advance(days=1)
    day2 = await _backup(gw, agent, "job-2", {"big": [BIG2], "small": [SMALL]})
    gw.clock.advance(hours=2)
    return first, day1, day2


async def test_the_hot_chunks_move_and_the_source_goes_with_its_last_older_point(gw: GatewayHarness) -> None:
    first, day1, day2 = await _two_days(gw)
    key = await gw.key_of("acct-a")
    state = gw.store.state
    agent = await gw.enrolled_agent("i-1")

    report = await collector.collect(_deps(gw))
    assert (report.packs_moved, report.packs_repacked, report.packs_condemned) == (1, 0, 0)
    [new] = state.gc.moved[first]
    # SMALL (used by the newest point) moved; BIG (day 1 only) stays where day 1 reads it.
    assert state.chunks[("acct-a", chunk_id(key, SMALL))].pack_id == new
    assert state.chunks[("acct-a", chunk_id(key, BIG))].pack_id == first
    # Both points reference the new pack too, and keep the source.
    assert state.gc.point_packs[day1] >= {first, new} and state.gc.point_packs[day2] >= {first, new}
    assert state.packs[new].size < state.packs[first].size // 5
    assert state.packs[new].retain_until == state.points[day2].retain_until
    with pytest.raises(ObjectLocked):
        await gw.objects.delete(state.packs[new].object_key)
    assert await _restore(gw, agent, "r-1", day1) == {"big": BIG, "small": SMALL}
    assert await _restore(gw, agent, "r-2", day2) == {"big": BIG2, "small": SMALL}
    _finish(gw, "r-1")
    _finish(gw, "r-2")

    # Day 3 finds SMALL in the new pack: the source's lock no longer moves.
    source_lock = state.packs[first].retain_until
    gw.clock.advance(days=1)
    day3 = await _backup(gw, agent, "job-3", {"small": [SMALL]})
    assert first not in state.gc.point_packs[day3] and new in state.gc.point_packs[day3]
    assert state.packs[first].retain_until == source_lock < state.points[day3].retain_until

    # Days 1 and 2 expire: the source is condemned, and reclaimed once its own lock passed.
    await _expire(gw, agent, day1)
    await _expire(gw, agent, day2)
    gw.clock.advance(hours=2)
    report = await collector.collect(_deps(gw))
    assert first in state.gc.condemned and report.packs_repacked == 0  # a moved source is not repacked
    gw.clock.set(source_lock + dt.timedelta(hours=2))
    await collector.collect(_deps(gw))
    assert first in state.gc.reclaimed and gw.clock.now() < state.points[day3].retain_until
    assert state.packs[first].object_key not in _pack_keys(gw)
    assert await _restore(gw, agent, "r-3", day3) == {"small": SMALL}


async def test_measured_once_per_newer_point_and_a_mostly_hot_pack_stays(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await _backup(gw, agent, "job-1", {"big": [BIG], "small": [SMALL]})
    first = (await _chunk_pack(gw, BIG)).pack_id  # (its segments are in a pack of their own)
    assert (await collector.collect(_deps(gw))).packs_measured == 0  # the newest point alone uses it
    gw.clock.advance(days=1)
    await _backup(gw, agent, "job-2", {"big": [BIG], "small": [SMALL]})
    gw.clock.advance(hours=2)
    report = await collector.collect(_deps(gw))
    assert (report.packs_measured, report.packs_moved) == (1, 0)
    assert (await collector.collect(_deps(gw))).packs_measured == 0  # no newer point since
    gw.clock.advance(days=1)
    await _backup(gw, agent, "job-3", {"big": [BIG], "small": [SMALL]})
    gw.clock.advance(hours=2)
    assert (await collector.collect(_deps(gw))).packs_measured == 0  # measured within heat_every
    assert (await collector.collect(_deps(gw, heat_every=dt.timedelta(hours=1)))).packs_measured == 1
    assert not gw.store.state.gc.moved and first in gw.store.state.packs


async def test_a_move_while_a_backup_runs_and_the_backup_located_before_it(
    gw: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 0057: the move no longer waits for the account's backups. The backup located SMALL in the
    source, the move took it to a new pack, then the point was recorded: it locates its chunks again
    and references the new pack, locked as long as itself; the source goes with the older points."""
    first, day1, day2 = await _two_days(gw)
    agent = await gw.enrolled_agent("i-1")
    key = await gw.key_of("acct-a")
    await gw.request_backup(agent, "job-3")
    gw.clock.advance(days=1)
    await gw.upload(agent, "job-3", [BIG3])
    original = point_packs.extend_pack_locks
    reports: list[collector.Report] = []

    async def located_then_moved(account_id: str, packs: Iterable[str], *args: Any) -> None:
        await original(account_id, packs, *args)
        if not reports:  # once: after the chunks were located, before the point is recorded
            assert first in set(packs)
            reports.append(await collector.collect(_deps(gw)))

    monkeypatch.setattr(point_packs, "extend_pack_locks", located_then_moved)
    entries = [dir_entry(""), file_entry("big", key, [BIG3]), file_entry("small", key, [SMALL])]
    day3 = (await gw.commit(agent, "job-3", entries)).point_id
    _finish(gw, "job-3")
    [report] = reports
    assert (report.packs_moved, report.repacks_refused) == (1, 0)
    state = gw.store.state
    [new] = state.gc.moved[first]
    assert state.chunks[("acct-a", chunk_id(key, SMALL))].pack_id == new
    # Located again after the move: day 3 references the new pack, not the source.
    assert new in state.gc.point_packs[day3] and first not in state.gc.point_packs[day3]
    assert state.packs[new].retain_until >= state.points[day3].retain_until - dt.timedelta(hours=12)
    for point_id, files in ((day1, {"big": BIG}), (day2, {"big": BIG2}), (day3, {"big": BIG3})):
        assert await _restore(gw, agent, f"r-{point_id}", point_id) == {**files, "small": SMALL}

    # Days 1 and 2 expire; day 3 lives past the source's lock, reading SMALL from the new pack.
    await _expire(gw, agent, day1)
    await _expire(gw, agent, day2)
    for point_id in (day1, day2, day3):
        _finish(gw, f"r-{point_id}")
    # (The commit extended the source's lock when it located SMALL there, before the move.)
    gw.clock.set(state.packs[first].retain_until + dt.timedelta(hours=2))
    await collector.collect(_deps(gw))  # condemned
    gw.clock.advance(hours=2)
    await collector.collect(_deps(gw))  # reclaimed
    state = gw.store.state
    assert first in state.gc.reclaimed and new not in state.gc.reclaimed
    assert state.packs[first].object_key not in _pack_keys(gw)
    assert await _restore(gw, agent, "r-last", day3) == {"big": BIG3, "small": SMALL}


async def test_a_restore_running_before_the_condemnation_keeps_the_source(gw: GatewayHarness) -> None:
    first, day1, day2 = await _two_days(gw)
    agent = await gw.enrolled_agent("i-1")
    await gw.request_restore(agent, "r-1", day1, conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE)
    assert (await collector.collect(_deps(gw))).packs_moved == 1
    await _expire(gw, agent, day1)
    await _expire(gw, agent, day2)
    source = gw.store.state.packs[first]
    gw.clock.set(source.retain_until + dt.timedelta(days=2))
    report = await collector.collect(_deps(gw))
    assert first in gw.store.state.gc.condemned and first not in gw.store.state.gc.reclaimed
    assert report.failures == 0
    _finish(gw, "r-1")
    gw.clock.advance(hours=2)
    await collector.collect(_deps(gw))
    assert first in gw.store.state.gc.reclaimed


async def test_turned_off_nothing_is_measured_then_one_chunk_id_batch_still_moves(gw: GatewayHarness) -> None:
    first, _, day2 = await _two_days(gw)
    assert (await collector.collect(_deps(gw, hot_below=0))).packs_measured == 0
    report = await collector.collect(_deps(gw, scan_chunks=1))
    assert (report.packs_measured, report.packs_moved) == (1, 1)
    agent = await gw.enrolled_agent("i-1")
    assert await _restore(gw, agent, "r-1", day2) == {"big": BIG2, "small": SMALL}
