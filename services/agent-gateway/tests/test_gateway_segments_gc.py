"""Garbage collection and repacking keep the segment blobs a version 2 manifest is stored in (ADR 0065).

A segment is a blob of the account's packs that no entry names: only the manifest does. The packs
holding a live point's segments are referenced by it like its chunks' packs, are never condemned
while it lives, and repacking moves its segments as live blobs; restores still read the point.
"""

from __future__ import annotations

import datetime as dt
import random

from gateway_helpers import Agent, GatewayHarness, dir_entry, file_entry
from strongroom_gateway.gc import collector
from strongroom_gateway.gc.repack import RepackPolicy
from strongroom_gateway.manifests import seal_manifest
from strongroom_gateway.segments import cut_segments
from strongroom_platform.manifest import encode_segment_list
from test_gateway_gc import _expire, _finish, _pack_keys, _restore

SAFETY = dt.timedelta(hours=1)
# Segment boundaries are keyed by the account's (random) chunk-id key, one cut per 16 paths on
# average (segments.CUT_MODULUS). With 60 files, day 2 shared fewer than two of day 1's segments in
# about 1 run of 15 (the repacking test's precondition); with 300 the odds are negligible.
FILES = {f"d/f{i:03}": [f"content {i} ".encode() * 50] for i in range(300)}


def _deps(gw: GatewayHarness, repack: RepackPolicy | None = None) -> collector.Deps:
    policy = collector.Policy(safety=SAFETY, repack=repack or RepackPolicy(below=0, hot_below=0))
    return collector.Deps(gw.store, gw.objects, gw.objects, gw.keys, gw.clock, policy)


async def _segmented_backup(
    gw: GatewayHarness, agent: Agent, job_id: str, dead: bytes | None = None
) -> tuple[str, set[str], set[bytes]]:
    """A backup of ``FILES`` (and ``big``, made of ``dead``, when given) whose manifest is then stored
    as segments, uploaded in a pack of their own (with ``dead``).

    The commit recorded the packs of the entries' chunks only; the point's references are dropped,
    so that collection records them from its (version 2) manifest. Returns the point, the packs
    the segments' upload wrote and the segment ids."""
    await gw.request_backup(agent, job_id)
    key = await gw.key_of(agent.account_id)
    files = dict(FILES, big=[dead]) if dead is not None else FILES
    entries = [dir_entry("")] + [file_entry(path, key, chunks) for path, chunks in sorted(files.items())]
    segments = list(cut_segments(key, ((e.path.encode(), e.SerializeToString()) for e in entries)))
    await gw.upload(agent, job_id, [c for chunks in FILES.values() for c in chunks])
    before = set(gw.store.state.packs)
    # One pack per upload call: the segments (and the dead blob) in a pack of their own.
    await gw.upload(agent, job_id, [content for _, content in segments] + ([dead] if dead is not None else []))
    point_id = (await gw.commit(agent, job_id, entries)).point_id
    _finish(gw, job_id)
    point = gw.store.state.points[point_id]
    sealed = seal_manifest(await gw.data_key(agent.account_id), point_id, encode_segment_list(r for r, _ in segments))
    gw.objects.damage(point.manifest_key, sealed)
    del gw.store.state.gc.point_packs[point_id]
    gw.store.state.point_refs.pop(point_id, None)
    return point_id, set(gw.store.state.packs) - before, {r.segment_id for r, _ in segments}


async def test_a_pack_holding_only_a_live_points_segments_is_kept(trusted_gw: GatewayHarness) -> None:
    gw = trusted_gw
    agent = await gw.enrolled_agent("i-1")
    old, _, _ = await _segmented_backup(gw, agent, "job-1")
    gw.clock.advance(days=1)
    # Day 2 lists the same segments: unchanged, they are the same blobs (uploading them again stores
    # nothing new), so day 1's segment pack is the only one holding them.
    live, new_packs, _ = await _segmented_backup(gw, agent, "job-2")
    assert new_packs == set()
    segment_packs = {
        loc.pack_id
        for (account, _), loc in gw.store.state.chunks.items()
        if account == "acct-a" and loc.pack_id not in {p for p in gw.store.state.gc.point_packs.get(old, set())}
    }
    await _expire(gw, agent, old)
    gw.clock.advance(days=40)
    report = await collector.collect(_deps(gw))
    assert report.points_referenced == 1  # the live point, from its manifest
    referenced = gw.store.state.gc.point_packs[live]
    assert segment_packs <= referenced
    assert report.packs_condemned == 0
    assert {gw.store.state.packs[p].object_key for p in referenced} <= _pack_keys(gw)
    assert await _restore(gw, agent, "r-1", live) == {p: b"".join(c) for p, c in FILES.items()}


async def test_repacking_moves_segments_as_live_blobs(trusted_gw: GatewayHarness) -> None:
    gw = trusted_gw
    agent = await gw.enrolled_agent("i-1")
    # Day 1: "big" (incompressible) sits in the pack of day 1's segments.
    old, [segment_pack], _ = await _segmented_backup(gw, agent, "job-1", dead=random.Random(7).randbytes(60_000))
    gw.clock.advance(days=1)
    # Day 2 deletes "big": its segments are day 1's but the last one (which held "big").
    live, _, listed = await _segmented_backup(gw, agent, "job-2")
    shared = {cid for (_, cid), loc in gw.store.state.chunks.items() if loc.pack_id == segment_pack} & listed
    assert len(shared) >= 2
    assert (await collector.collect(_deps(gw))).points_referenced == 2  # both, from their manifests
    assert segment_pack in gw.store.state.gc.point_packs[live]
    await _expire(gw, agent, old)
    gw.clock.advance(days=40)
    report = await collector.collect(_deps(gw, RepackPolicy()))
    # Day 1's segment pack is mostly "big", dead now: repacked, its live segments moved.
    assert report.packs_repacked >= 1
    assert segment_pack in gw.store.state.gc.repacked
    assert {gw.store.state.chunks[("acct-a", cid)].pack_id for cid in shared} == {
        gw.store.state.gc.repacked[segment_pack]
    }
    assert await _restore(gw, agent, "r-1", live) == {p: b"".join(c) for p, c in FILES.items()}
