"""A day-2 commit counts its base's chunk references per pack (ADR 0034, update of session 5): the
same manifest, counts and packs as locating every chunk, and never across a move of the base's
packs (ADR 0057), before or during the commit."""

from __future__ import annotations

import collections
import datetime as dt
import logging
import random
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import pytest
from gateway_helpers import Agent, GatewayHarness, aiter_of, chunk_id, dir_entry, file_entry
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_gateway.gc import collector
from strongroom_gateway.points import building, inherit
from strongroom_gateway.points import packs as point_packs
from strongroom_gateway.points.inherit import Inheritance
from strongroom_gateway.synthesis import SortedSpool
from strongroom_platform.manifest import decode_manifest, encode_manifest
from test_gateway_gc import _finish, _pack_keys, _restore
from test_gateway_repack import BIG, OTHER, SMALL, _deps, _two_days

THIRD = random.Random(7).randbytes(1_000)
INHERITED = "its packs inherited"


@pytest.fixture
def gw(trusted_gw: GatewayHarness) -> GatewayHarness:
    return trusted_gw


async def _day2(
    gw: GatewayHarness,
    agent: Agent,
    job_id: str,
    base: str,
    sent: dict[str, list[bytes]],
    deleted: Iterable[str],
    count: int,
) -> str:
    """A backup committing only ``sent`` and ``deleted`` on ``base``; its contents already uploaded."""
    key = await gw.key_of(agent.account_id)
    header = gateway_pb2.PointHeader(
        job_id=job_id,
        filesystem=common_pb2.Filesystem(mount_point="/", device="/dev/vda1", fs_type="ext4", capacity_bytes=100 << 30),
        base_point_id=base,
        entry_count=count,
    )
    batch = gateway_pb2.EntryBatch(
        entries=[file_entry(path, key, chunks) for path, chunks in sorted(sent.items())], deleted_paths=list(deleted)
    )
    requests = [gateway_pb2.CommitPointRequest(header=header), gateway_pb2.CommitPointRequest(entries=batch)]
    return (await gw.stub.CommitPoint(aiter_of(requests), metadata=agent.md)).point_id


async def _full_refs(gw: GatewayHarness, point_id: str) -> dict[str, int]:
    """The point's references per pack located from every entry of its manifest."""
    counts: collections.Counter[bytes] = collections.Counter()
    for entry in decode_manifest(await gw.point_manifest(point_id)):
        counts.update(bytes(c) for c in entry.chunk_ids)
    async with gw.store.transaction() as tx:
        refs, missing = await tx.chunk_pack_refs("acct-a", dict(counts))
    assert not missing
    return _plus(refs, await gw.segment_refs(point_id))


def _plus(refs: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    return {p: refs.get(p, 0) + more.get(p, 0) for p in refs.keys() | more.keys()}


async def _recorded(gw: GatewayHarness, point_id: str) -> tuple[int, dict[str, int]]:
    async with gw.store.transaction() as tx:
        recorded = await tx.point_refs(point_id)
    assert recorded is not None
    return recorded


async def test_a_day2_point_counts_from_its_base_and_drops_the_packs_it_no_longer_uses(
    gw: GatewayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    for contents in ([BIG, SMALL], [OTHER]):  # two packs
        await gw.upload(agent, "job-1", contents)
    key = await gw.key_of("acct-a")
    entries = [dir_entry(""), file_entry("a", key, [BIG]), file_entry("b", key, [SMALL]), file_entry("c", key, [OTHER])]
    base = (await gw.commit(agent, "job-1", entries)).point_id
    _finish(gw, "job-1")
    big_pack = gw.store.state.chunks[("acct-a", chunk_id(key, BIG))].pack_id
    other_pack = gw.store.state.chunks[("acct-a", chunk_id(key, OTHER))].pack_id
    # Its manifest's segments (format version 2) are referenced like its chunks, in their own pack.
    base_segments = await gw.segment_refs(base)
    assert base_segments and not base_segments.keys() & {big_pack, other_pack}
    assert await _recorded(gw, base) == (0, _plus({big_pack: 2, other_pack: 1}, base_segments))

    await gw.request_backup(agent, "job-2")
    await gw.upload(agent, "job-2", [THIRD])
    third_pack = gw.store.state.chunks[("acct-a", chunk_id(key, THIRD))].pack_id
    caplog.set_level(logging.INFO, logger="strongroom_gateway.points.commit")
    # c deleted (its pack is used by nothing else), b changed (a new chunk, and SMALL twice),
    # e added (deduplicated against a).
    sent = {"b": [SMALL, THIRD, SMALL], "e": [BIG]}
    point = await _day2(gw, agent, "job-2", base, sent, ["c"], count=4)
    _finish(gw, "job-2")
    assert INHERITED in caplog.text
    # The base's segment references are taken off, this point's (re-cut, partly new) added.
    segment_refs = await gw.segment_refs(point)
    refs = _plus({big_pack: 4, third_pack: 1}, segment_refs)
    assert await _recorded(gw, point) == (0, refs) and await _full_refs(gw, point) == refs
    assert gw.store.state.gc.point_packs[point] == {big_pack, third_pack} | segment_refs.keys()
    recorded = gw.store.state.points[point]
    assert (recorded.file_count, recorded.total_bytes) == (3, len(BIG) * 2 + len(SMALL) * 2 + len(THIRD))
    assert [e.path for e in decode_manifest(await gw.point_manifest(point))] == ["", "a", "b", "e"]
    assert await _restore(gw, agent, "r-1", point) == {"a": BIG, "b": SMALL + THIRD + SMALL, "e": BIG}

    # Nothing changed the next day: the same references, inherited again.
    caplog.clear()
    await gw.request_backup(agent, "job-3")
    same = await _day2(gw, agent, "job-3", point, {}, [], count=4)
    assert INHERITED in caplog.text and await _recorded(gw, same) == (0, refs)
    assert await gw.stored_manifest("acct-a", same) == await gw.stored_manifest("acct-a", point)


async def test_a_move_after_the_base_was_recorded_locates_every_chunk(
    gw: GatewayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """The guard: the base's counts name the repacked source; the new point must name the new pack."""
    first, live, _ = await _two_days(gw)
    agent = await gw.enrolled_agent("i-1")
    assert first in (await _recorded(gw, live))[1]
    # The chunks' pack, and possibly a pack of segments (format version 2; depends on the account's key).
    assert (await collector.collect(_deps(gw))).packs_repacked >= 1 and first in gw.store.state.gc.repacked
    state = gw.store.state
    new = state.gc.repacked[first]

    gw.clock.advance(days=2)  # the new pack, locked like the live point, is then short of this one's lock
    await gw.request_backup(agent, "job-3")
    await gw.upload(agent, "job-3", [THIRD])
    caplog.set_level(logging.INFO, logger="strongroom_gateway.points.commit")
    point = await _day2(gw, agent, "job-3", live, {"third": [THIRD]}, [], count=4)
    _finish(gw, "job-3")
    refs = await _full_refs(gw, point)
    assert new in refs and first not in refs
    assert state.gc.point_packs[point] == set(refs) and await _recorded(gw, point) == (1, refs)
    assert INHERITED not in caplog.text
    # The new pack is locked as long as the point (ADR 0010).
    assert state.packs[new].retain_until >= state.points[point].retain_until

    # The source goes once its lock passed; the point restores without it.
    source = state.packs[first]
    gw.clock.set(max(source.retain_until, state.points[live].created_at) + dt.timedelta(days=1, minutes=1))
    report = await collector.collect(_deps(gw))
    assert first in state.gc.reclaimed and source.object_key not in _pack_keys(gw)
    expected = {"small": SMALL, "other": OTHER, "third": THIRD}
    assert await _restore(gw, agent, "r-1", point) == expected
    # Its child inherits again if nothing moved since it was recorded. With manifest format version 2
    # that collection may have repacked a pack of segments (which segments the points share depends
    # on the account's key): a move, so the child counts every reference again.
    moved = report.packs_repacked + report.packs_moved
    caplog.clear()
    await gw.request_backup(agent, "job-4")
    child = await _day2(gw, agent, "job-4", point, {}, ["third"], count=3)
    assert (INHERITED in caplog.text) == (moved == 0), report
    assert (await _recorded(gw, child))[1] == await _full_refs(gw, child)
    assert await _restore(gw, agent, "r-2", child) == {"small": SMALL, "other": OTHER}


async def test_a_move_during_an_inherited_commit_locates_again(
    gw: GatewayHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first, live, _ = await _two_days(gw)
    agent = await gw.enrolled_agent("i-1")
    gw.clock.advance(days=2)  # the new pack, locked like the live point, is then short of this one's lock
    await gw.request_backup(agent, "job-3")
    await gw.upload(agent, "job-3", [THIRD])
    original = point_packs.extend_pack_locks
    reports: list[collector.Report] = []

    async def counted_then_repacked(account_id: str, packs: Iterable[str], *args: Any) -> None:
        await original(account_id, packs, *args)
        if not reports:  # once: after the references were counted, before the point is recorded
            assert first in set(packs)
            reports.append(await collector.collect(_deps(gw)))

    monkeypatch.setattr(point_packs, "extend_pack_locks", counted_then_repacked)
    caplog.set_level(logging.INFO, logger="strongroom_gateway.points.commit")
    point = await _day2(gw, agent, "job-3", live, {"third": [THIRD]}, [], count=4)
    _finish(gw, "job-3")
    assert INHERITED in caplog.text and "chunks moved during the commit" in caplog.text
    [report] = reports
    assert report.packs_repacked >= 1  # and possibly a pack of segments, as above
    state = gw.store.state
    new = state.gc.repacked[first]
    refs = await _full_refs(gw, point)
    assert new in refs and first not in refs
    assert state.gc.point_packs[point] == set(refs) and await _recorded(gw, point) == (1, refs)
    assert state.packs[new].retain_until >= state.points[point].retain_until
    assert await _restore(gw, agent, "r-1", point) == {"small": SMALL, "other": OTHER, "third": THIRD}


def _locate(where: dict[bytes, str]) -> building.Locate:
    def locate(counts: dict[bytes, int]) -> Future[tuple[dict[str, int], list[bytes]]]:
        refs: collections.Counter[str] = collections.Counter()
        for cid, n in counts.items():
            if cid in where:
                refs[where[cid]] += n
        answer: Future[tuple[dict[str, int], list[bytes]]] = Future()
        answer.set_result((dict(refs), [c for c in counts if c not in where]))
        return answer

    return locate


def _spools(base: list[common_pb2.FileEntry], rng: random.Random, where: dict[bytes, str]) -> tuple[SortedSpool, ...]:
    changes, deleted = SortedSpool(), SortedSpool()
    pool = [c for c, pack in where.items() if pack != "pack-new"]
    for n, i in enumerate(rng.sample(range(len(base)), 60)):
        entry = base[i]
        if n % 3 == 0:
            deleted.add(entry.path.encode(), b"")
            continue
        changed = common_pb2.FileEntry()
        changed.CopyFrom(entry)
        new = rng.randbytes(32)
        where[new] = "pack-new"
        changed.chunk_ids.extend([new, *rng.sample(pool, 2)])
        changed.size += 1
        changes.add(changed.path.encode(), changed.SerializeToString())
    for i in range(20):
        added = common_pb2.FileEntry(path=f"zz-added-{i}", type=common_pb2.ENTRY_TYPE_FILE, size=i)
        added.chunk_ids.extend(rng.sample(pool, 3))
        changes.add(added.path.encode(), added.SerializeToString())
    return changes, deleted


def _synthetic() -> tuple[list[common_pb2.FileEntry], dict[bytes, str]]:
    rng = random.Random(3)
    where: dict[bytes, str] = {}
    base = []
    for i in range(2_000):
        ids = [rng.randbytes(32) for _ in range(rng.choice((0, 1, 1, 3)))]
        for cid in ids:
            where[cid] = f"pack-{i // 150}"
        if ids and i % 7 == 0:
            ids.append(ids[0])  # a chunk listed twice in one file
        base.append(common_pb2.FileEntry(path=f"f{i:05d}", type=common_pb2.ENTRY_TYPE_FILE, size=i, chunk_ids=ids))
    return base, where


@pytest.mark.parametrize("limit", [inherit.INHERIT_CHUNK_LIMIT, 0])
def test_counted_references_equal_located_ones(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """Base - dropped + sent per pack, against locating every chunk; past the limit, located."""
    monkeypatch.setattr(inherit, "INHERIT_CHUNK_LIMIT", limit)
    base, where = _synthetic()
    data = encode_manifest(base)
    locate = _locate(where)
    full_base = building.build(data, SortedSpool(), SortedSpool(), locate, None)
    inherited = Inheritance(full_base.refs, full_base.file_count, full_base.total_bytes)
    for seed in range(3):
        full = building.build(data, *_spools(base, random.Random(seed), where), locate, None)
        counted = building.build(data, *_spools(base, random.Random(seed), where), locate, inherited)
        assert list(decode_manifest(counted.data)) == list(decode_manifest(full.data))
        assert (counted.entry_count, counted.file_count, counted.total_bytes) == (
            full.entry_count,
            full.file_count,
            full.total_bytes,
        )
        assert counted.refs == full.refs and "pack-new" in counted.refs


def test_counts_that_do_not_match_the_base_are_not_trusted() -> None:
    base, where = _synthetic()
    data = encode_manifest(base)
    locate = _locate(where)
    full_base = building.build(data, SortedSpool(), SortedSpool(), locate, None)
    wrong = {"pack-elsewhere": 5}  # none of the packs the dropped entries' chunks are in
    full = building.build(data, *_spools(base, random.Random(1), where), locate, None)
    counted = building.build(
        data,
        *_spools(base, random.Random(1), where),
        locate,
        Inheritance(wrong, full_base.file_count, full_base.total_bytes),
    )
    assert counted.refs == full.refs
