"""Commits that write their manifest as format version 2 (STRONGROOM_GATEWAY_MANIFEST_SEGMENTS, ADR 0065).

A full point stores its record stream as segments; a day-2 point synthesized from it stores only the
segments the day touched and lists the base's others by id; both read back, restore and are counted
by garbage collection like their chunks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from gateway_helpers import Agent, GatewayHarness, dir_entry, file_entry
from strongroom.gateway.v1 import manifest_pb2
from strongroom_gateway import manifests
from strongroom_gateway.gc import collector
from strongroom_gateway.gc.repack import RepackPolicy
from strongroom_gateway.manifests import open_manifest
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform.manifest import MAGIC, decode_manifest, decode_segment_list, manifest_records
from strongroom_platform.testing import FakeClock
from test_gateway_gc import _expire, _finish, _pack_keys, _restore
from test_gateway_synthesis import _commit

SAFETY = dt.timedelta(hours=1)
FILES = {f"d{i // 40:02}/f{i:04}": f"content of file {i} ".encode() * 20 for i in range(400)}


@pytest.fixture
async def sgw(clock: FakeClock) -> AsyncIterator[GatewayHarness]:
    harness = GatewayHarness(clock, store=InMemoryGatewayStore(trusted_clock=clock), manifest_segments=True)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


def _deps(gw: GatewayHarness) -> collector.Deps:
    policy = collector.Policy(safety=SAFETY, repack=RepackPolicy(below=0, hot_below=0))
    return collector.Deps(gw.store, gw.objects, gw.objects, gw.keys, gw.clock, policy)


async def _stored(gw: GatewayHarness, point_id: str) -> bytes:
    """The point's manifest object as stored, opened (not expanded)."""
    point = gw.store.state.points[point_id]
    sealed = await gw.objects.get(point.manifest_key, version_id=point.manifest_version_id)
    return open_manifest(await gw.data_key("acct-a"), point_id, sealed)


async def _expanded(gw: GatewayHarness, point_id: str) -> dict[str, int]:
    data = await manifests.read_point_manifest(gw.objects, gw.keys, gw.store.state.points[point_id], store=gw.store)
    return {e.path: e.size for e in decode_manifest(data)}


def _segment_ids(data: bytes) -> set[bytes]:
    return {r.segment_id for r in decode_segment_list(data)}


async def _day1(gw: GatewayHarness) -> tuple[Agent, str]:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    await gw.upload(agent, "job-1", list(FILES.values()))
    dirs = sorted({p.split("/")[0] for p in FILES})
    entries = [dir_entry("")] + [dir_entry(d) for d in dirs] + [file_entry(p, key, [c]) for p, c in FILES.items()]
    point_id = (await _commit(gw, agent, "job-1", entries)).point_id
    _finish(gw, "job-1")
    return agent, point_id


async def _day2(gw: GatewayHarness, agent: Agent, base: str) -> tuple[str, dict[str, bytes]]:
    """Day 2 changes one file, adds one and deletes one (synthesized from ``base``)."""
    await gw.request_backup(agent, "job-2")
    key = await gw.key_of("acct-a")
    changed = {"d03/f0130": b"changed on day two", "d09/new": b"added on day two"}
    await gw.upload(agent, "job-2", list(changed.values()))
    entries = [file_entry(p, key, [c]) for p, c in changed.items()]
    count = 1 + 10 + len(FILES)  # one changed, one added, one deleted
    point_id = (await _commit(gw, agent, "job-2", entries, base=base, deleted=["d05/f0201"], count=count)).point_id
    _finish(gw, "job-2")
    files = {p: c for p, c in FILES.items() if p != "d05/f0201"} | changed
    return point_id, files


async def test_a_point_is_written_as_segments_and_reads_back(sgw: GatewayHarness) -> None:
    gw = sgw
    agent, point_id = await _day1(gw)
    stored = await _stored(gw, point_id)
    assert stored[:5] == MAGIC + b"\x02"
    refs = decode_segment_list(stored)
    assert sum(r.entry_count for r in refs) == 1 + 10 + len(FILES)
    assert 5 <= len(refs) <= 120  # 16 records per segment on average
    assert await _expanded(gw, point_id) == {"": 0} | {f"d{i:02}": 0 for i in range(10)} | {
        p: len(c) for p, c in FILES.items()
    }
    # The point references the packs of its segments, counted like chunks.
    segment_packs = {gw.store.state.chunks[("acct-a", s)].pack_id for s in _segment_ids(stored)}
    assert segment_packs <= gw.store.state.gc.point_packs[point_id]
    _, counts = gw.store.state.point_refs[point_id]
    assert sum(counts.values()) == len(FILES) + len(_segment_ids(stored))
    # The catalog gets the version 1 stream; a restore gets every file.
    request = manifest_pb2.ReadPointManifestRequest(point_id=point_id)
    served = b"".join([r.data async for r in gw.manifest_stub.ReadPointManifest(request)])
    assert served[:5] == MAGIC + b"\x01"
    assert list(manifest_records(served)) == list(
        manifest_records(
            await manifests.read_point_manifest(gw.objects, gw.keys, gw.store.state.points[point_id], store=gw.store)
        )
    )
    assert await _restore(gw, agent, "r-1", point_id) == FILES


async def test_a_day2_point_writes_only_the_segments_the_day_touched(sgw: GatewayHarness) -> None:
    gw = sgw
    agent, day1 = await _day1(gw)
    first = _segment_ids(await _stored(gw, day1))
    blobs_before = len(gw.store.state.chunks)
    gw.clock.advance(days=1)
    day2, files = await _day2(gw, agent, day1)
    second = _segment_ids(await _stored(gw, day2))
    new = second - first
    # Three paths touched: at most three (four when an addition moved a boundary) new segments.
    assert 1 <= len(new) <= 4
    assert len(gw.store.state.chunks) == blobs_before + 2 + len(new)  # two new chunks, the new segments
    assert await _expanded(gw, day2) == {"": 0} | {f"d{i:02}": 0 for i in range(10)} | {
        p: len(c) for p, c in files.items()
    }
    # Its references are exactly its chunks' and its segments', as if every one had been located.
    _, counts = gw.store.state.point_refs[day2]
    chunk_refs = len(files)
    assert sum(counts.values()) == chunk_refs + len(second)
    assert await _restore(gw, agent, "r-2", day2) == files


async def test_gc_after_a_day2_point_keeps_the_packs_of_its_inherited_segments(sgw: GatewayHarness) -> None:
    gw = sgw
    agent, day1 = await _day1(gw)
    first = _segment_ids(await _stored(gw, day1))
    gw.clock.advance(days=1)
    day2, files = await _day2(gw, agent, day1)
    inherited = first & _segment_ids(await _stored(gw, day2))
    assert inherited
    inherited_packs = {gw.store.state.chunks[("acct-a", s)].pack_id for s in inherited}
    await _expire(gw, agent, day1)
    gw.clock.advance(days=40)
    report = await collector.collect(_deps(gw))
    assert report.points_reclaimed == 1
    for pack_id in inherited_packs:
        assert pack_id not in gw.store.state.gc.condemned
        assert gw.store.state.packs[pack_id].object_key in _pack_keys(gw)
    assert await _restore(gw, agent, "r-3", day2) == files


async def test_an_unchanged_point_takes_its_base_list_and_references_unread(sgw: GatewayHarness) -> None:
    gw = sgw
    agent, day1 = await _day1(gw)
    listing = await _stored(gw, day1)
    blobs_before = len(gw.store.state.chunks)
    # A damaged segment pack: a commit that read the base's segments would fail.
    pack = gw.store.state.packs[gw.store.state.chunks[("acct-a", decode_segment_list(listing)[0].segment_id)].pack_id]
    intact = await gw.objects.get(pack.object_key)
    gw.objects.damage(pack.object_key, bytes(len(intact)))
    gw.clock.advance(days=1)
    await gw.request_backup(agent, "job-2")
    day2 = (await _commit(gw, agent, "job-2", [], base=day1, count=1 + 10 + len(FILES))).point_id
    assert await _stored(gw, day2) == listing
    assert len(gw.store.state.chunks) == blobs_before
    assert gw.store.state.point_refs[day2][1] == gw.store.state.point_refs[day1][1]
    assert gw.store.state.gc.point_packs[day2] == gw.store.state.gc.point_packs[day1]
    gw.objects.damage(pack.object_key, intact)
    assert await _expanded(gw, day2) == await _expanded(gw, day1)
