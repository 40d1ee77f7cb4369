"""Garbage collection over the in-memory store (ADR 0041): expiry, mark, sweep, the backup race."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import grpc
import pytest
from gateway_helpers import Agent, GatewayHarness, chunk_id, dir_entry, file_entry, meta, stamped
from strongroom.agent.v1 import gateway_pb2
from strongroom.events.v1 import events_pb2
from strongroom_gateway.gc import collector
from strongroom_gateway.gc.repack import RepackPolicy
from strongroom_gateway.ports import Pack
from strongroom_platform import events
from strongroom_platform.eventbus import PoisonRecord
from strongroom_platform.objectstore import ObjectLocked, ObjectNotFound

SAFETY = dt.timedelta(hours=1)


def _deps(gw: GatewayHarness) -> collector.Deps:
    # Repacking and moves off: these are ADR 0041's rules alone (test_gateway_repack.py and
    # test_gateway_generations.py have ADR 0042's).
    policy = collector.Policy(safety=SAFETY, repack=RepackPolicy(below=0, hot_below=0))
    return collector.Deps(gw.store, gw.objects, gw.objects, gw.keys, gw.clock, policy)


def _finish(gw: GatewayHarness, job_id: str) -> None:
    """Test set-up: the agent reported the backup's end (the fake's job row)."""
    jobs = gw.store.state.jobs
    jobs[job_id] = dataclasses.replace(jobs[job_id], state="finished")


async def _backup(gw: GatewayHarness, agent: Agent, job_id: str, files: dict[str, list[bytes]]) -> str:
    """One backup job: upload every content (one pack per call), commit ``files``, finish.

    The point's manifest (format version 2) shares no segment with another job's (``stamped``): its
    segments are in one pack of their own that only it references (``_segment_packs``).
    """
    await gw.request_backup(agent, job_id)
    key = await gw.key_of(agent.account_id)
    contents = [c for chunks in files.values() for c in chunks]
    await gw.upload(agent, job_id, contents)
    entries = stamped(job_id, [dir_entry("")] + [file_entry(p, key, chunks) for p, chunks in sorted(files.items())])
    point_id = (await gw.commit(agent, job_id, entries)).point_id
    _finish(gw, job_id)
    return point_id


async def _expire(gw: GatewayHarness, agent: Agent, point_id: str) -> None:
    point = gw.store.state.points[point_id]
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


async def _chunk_pack(gw: GatewayHarness, content: bytes) -> Pack:
    """The pack holding the uploaded ``content`` (a pack of chunks, not of manifest segments)."""
    state = gw.store.state
    return state.packs[state.chunks[("acct-a", chunk_id(await gw.key_of("acct-a"), content))].pack_id]


async def _segment_packs(gw: GatewayHarness, point_id: str) -> set[Pack]:
    """The packs holding the point's manifest segments: one for a point of ``_backup``, referenced by
    that point alone (so its fate follows the point's, whatever the account's key)."""
    return {gw.store.state.packs[p] for p in await gw.segment_packs(point_id)}


def _pack_keys(gw: GatewayHarness) -> set[str]:
    return {k for k in gw.objects._versions if k.startswith("packs/") and gw.objects._current(k) is not None}


async def _restore(gw: GatewayHarness, agent: Agent, job_id: str, point_id: str) -> dict[str, bytes]:
    """Restore the whole point the way the agent does: manifest, then its chunks; path -> content."""
    await gw.request_restore(agent, job_id, point_id, conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE)
    call = gw.stub.Connect(metadata=agent.md)
    try:
        while (await asyncio.wait_for(call.read(), 5)).run_restore.restore_job_id != job_id:
            pass
    finally:
        call.cancel()
    files: dict[str, bytes] = {}
    request = gateway_pb2.ReadManifestRequest(restore_job_id=job_id, point_id=point_id)
    async for response in gw.stub.ReadManifest(request, metadata=agent.md):
        for entry in response.entries:
            if not entry.chunk_ids:
                continue
            read = gateway_pb2.ReadChunksRequest(restore_job_id=job_id, chunk_ids=list(entry.chunk_ids))
            files[entry.path] = b"".join([r.data async for r in gw.stub.ReadChunks(read, metadata=agent.md)])
    return files


async def test_an_expired_points_packs_are_reclaimed_once_their_lock_passes(trusted_gw: GatewayHarness) -> None:
    gw = trusted_gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"a": [b"alpha" * 100], "b": [b"beta" * 100]})
    gw.clock.advance(days=1)
    live = await _backup(gw, agent, "job-2", {"c": [b"gamma" * 100]})
    old_pack, live_pack = await _chunk_pack(gw, b"alpha" * 100), await _chunk_pack(gw, b"gamma" * 100)
    old_segments, live_segments = await _segment_packs(gw, old), await _segment_packs(gw, live)
    assert len(old_segments) == len(live_segments) == 1 and len(gw.store.state.packs) == 4
    assert gw.store.state.gc.point_packs == {
        old: {p.pack_id for p in {old_pack} | old_segments},
        live: {p.pack_id for p in {live_pack} | live_segments},
    }

    gw.clock.advance(hours=2)
    report = await collector.collect(_deps(gw))
    assert report.packs_condemned == 0  # every pack is referenced by a live point

    await _expire(gw, agent, old)
    report = await collector.collect(_deps(gw))
    # Condemned (its chunks' pack and its segments' pack), but locked for 31 days from their writing:
    # nothing is deleted, nothing leaves the index.
    assert (report.packs_condemned, report.packs_reclaimed, report.objects_deleted) == (2, 0, 0)
    assert gw.store.state.gc.condemned.keys() == {p.pack_id for p in {old_pack} | old_segments}
    assert old_pack.object_key in _pack_keys(gw)
    with pytest.raises(ObjectLocked):
        await gw.objects.delete(old_pack.object_key)

    gw.clock.set(max(p.retain_until for p in {old_pack} | old_segments) + dt.timedelta(minutes=1))
    report = await collector.collect(_deps(gw))
    freed = old_pack.size + sum(p.size for p in old_segments)
    assert (report.packs_reclaimed, report.objects_deleted, report.bytes_freed) == (2, 2, freed)
    assert _pack_keys(gw) == {p.object_key for p in {live_pack} | live_segments}
    assert not any(loc.pack_id == old_pack.pack_id for loc in gw.store.state.chunks.values())
    # The expired point's manifest and disaster-recovery record are gone too; the live one stays.
    assert report.points_reclaimed == 1
    with pytest.raises(ObjectNotFound):
        await gw.objects.get(f"manifests/acct-a/{old}")
    with pytest.raises(ObjectNotFound):
        await gw.objects.get(f"vault/points/acct-a/{old}")

    assert await _restore(gw, agent, "r-1", live) == {"c": b"gamma" * 100}
    again = await collector.collect(_deps(gw))
    assert (again.packs_condemned, again.packs_reclaimed, again.objects_deleted) == (0, 0, 0)


async def test_a_pack_a_live_point_still_shares_is_kept(trusted_gw: GatewayHarness) -> None:
    gw = trusted_gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"a": [b"alpha" * 100], "b": [b"beta" * 100]})
    gw.clock.advance(days=1)
    # The next day's point still has "a": deduplicated, it references the first pack.
    live = await _backup(gw, agent, "job-2", {"a": [b"alpha" * 100]})
    # Manifest format version 2: the expired point's segment pack is garbage (``_backup``'s points
    # share no segment).
    dead_segments = await gw.segment_packs(old)
    assert len(dead_segments) == 1 and not dead_segments & await gw.segment_packs(live)
    first_pack = gw.store.state.chunks[("acct-a", chunk_id(await gw.key_of("acct-a"), b"alpha" * 100))].pack_id
    await _expire(gw, agent, old)
    gw.clock.advance(days=40)
    report = await collector.collect(_deps(gw))
    assert (report.packs_condemned, report.packs_reclaimed) == (len(dead_segments), 0)
    assert first_pack in gw.store.state.packs and first_pack not in gw.store.state.gc.condemned
    assert await _restore(gw, agent, "r-1", live) == {"a": b"alpha" * 100}


async def test_a_backup_that_reuses_a_condemned_pack_keeps_it(trusted_gw: GatewayHarness) -> None:
    """kopia/PBS's race: FindMissingChunks answers "present" for a chunk of a condemned pack."""
    gw = trusted_gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"a": [b"alpha" * 100]})
    pack, [segments] = await _chunk_pack(gw, b"alpha" * 100), await _segment_packs(gw, old)
    await _expire(gw, agent, old)
    gw.clock.advance(days=32)
    await gw.request_backup(agent, "job-2")
    key = await gw.key_of("acct-a")
    # Condemned and unlocked, but a backup is running since before the condemnation: not reclaimed.
    report = await collector.collect(_deps(gw))
    assert (report.packs_condemned, report.packs_reclaimed) == (2, 0)  # the chunks' pack and the segments'
    missing = await gw.stub.FindMissingChunks(
        gateway_pb2.FindMissingChunksRequest(
            job_id="job-2", chunk_ids=[file_entry("a", key, [b"alpha" * 100]).chunk_ids[0]]
        ),
        metadata=agent.md,
    )
    assert list(missing.missing_chunk_ids) == []
    entries = stamped("job-2", [dir_entry(""), file_entry("a", key, [b"alpha" * 100])])
    live = (await gw.commit(agent, "job-2", entries)).point_id
    _finish(gw, "job-2")
    gw.clock.advance(hours=2)
    report = await collector.collect(_deps(gw))
    # The chunks' pack is referenced again by the new point; the expired point's segments are not.
    assert report.packs_reclaimed == 1 and gw.store.state.gc.reclaimed.keys() == {segments.pack_id}
    assert pack.pack_id in gw.store.state.packs and pack.object_key in _pack_keys(gw)
    assert await _restore(gw, agent, "r-1", live) == {"a": b"alpha" * 100}


async def test_a_commit_after_its_pack_was_reclaimed_fails_instead_of_recording_a_broken_point(
    trusted_gw: GatewayHarness,
) -> None:
    gw = trusted_gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"a": [b"alpha" * 100]})
    pack_id = (await _chunk_pack(gw, b"alpha" * 100)).pack_id
    await _expire(gw, agent, old)
    gw.clock.advance(days=32)
    assert (await collector.collect(_deps(gw))).packs_condemned == 2  # the chunks' pack and the segments'
    gw.clock.advance(hours=2)
    await gw.request_backup(agent, "job-2")  # started after the condemnation
    key = await gw.key_of("acct-a")
    entries = stamped("job-2", [dir_entry(""), file_entry("a", key, [b"alpha" * 100])])

    report = await collector.collect(_deps(gw))
    assert report.packs_reclaimed == 2
    # The chunk left the index with its pack: the commit is refused, no point names the lost chunk.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gw.commit(agent, "job-2", entries)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not [p for p in gw.store.state.points.values() if p.job_id == "job-2"]
    assert pack_id in gw.store.state.gc.reclaimed


async def test_hold_packs_refuses_a_reclaimed_pack(trusted_gw: GatewayHarness) -> None:
    """The commit's last check, in its own transaction (the sweep ran between lookup and record)."""
    gw = trusted_gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"a": [b"alpha" * 100]})
    pack_id = (await _chunk_pack(gw, b"alpha" * 100)).pack_id
    await _expire(gw, agent, old)
    gw.clock.advance(days=32)
    await collector.collect(_deps(gw))
    gw.clock.advance(hours=2)
    await collector.collect(_deps(gw))
    assert pack_id in gw.store.state.gc.reclaimed and len(gw.store.state.gc.reclaimed) == 2
    async with gw.store.transaction() as tx:
        assert await tx.hold_packs("acct-a", [pack_id, "other"]) == [pack_id]


async def test_a_running_backups_fresh_packs_are_not_condemned(trusted_gw: GatewayHarness) -> None:
    gw = trusted_gw
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    await gw.upload(agent, "job-1", [b"uploaded, not committed yet"])
    gw.clock.advance(days=40)
    assert (await collector.collect(_deps(gw))).packs_condemned == 0
    _finish(gw, "job-1")  # it failed without a point: its pack is garbage now
    assert (await collector.collect(_deps(gw))).packs_condemned == 1


async def test_version_expired_of_another_account_is_poison(trusted_gw: GatewayHarness) -> None:
    gw = trusted_gw
    agent = await gw.enrolled_agent("i-1")
    point = await _backup(gw, agent, "job-1", {"a": [b"alpha"]})
    event = events_pb2.VersionExpired(
        meta=meta(),
        account_id="acct-b",
        instance_id="i-1",
        version_id=gw.store.state.points[point].version_id,
        point_ids=[point],
    )
    with pytest.raises(PoisonRecord):
        await gw.deliver(events.VERSION_EXPIRED, event)
    assert gw.store.state.gc.expirations == {}
