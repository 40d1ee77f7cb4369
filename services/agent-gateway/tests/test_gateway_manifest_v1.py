"""Manifest format version 1 stays readable and collectable (ADR 0065, update of session 10).

Every other gateway test commits with the default, format version 2 (segments). These keep the
version 1 writer (``STRONGROOM_GATEWAY_MANIFEST_SEGMENTS=0``) and what a deployment that wrote it
relies on after the default changed: garbage collection of a version 1 point counts exactly its
chunk packs, and a gateway restarted with segments on reads, restores and synthesizes from a point
an older gateway wrote as version 1.
"""

from __future__ import annotations

import datetime as dt

from gateway_helpers import GatewayHarness, file_entry, stamped
from strongroom.gateway.v1 import manifest_pb2
from strongroom_gateway.gc import collector
from strongroom_platform.manifest import MAGIC, decode_manifest
from test_gateway_gc import _backup, _chunk_pack, _deps, _expire, _finish, _pack_keys, _restore
from test_gateway_synthesis import _commit


async def test_a_version_1_points_packs_are_condemned_and_reclaimed_alone(trusted_v1_gw: GatewayHarness) -> None:
    gw = trusted_v1_gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"a": [b"alpha" * 100], "b": [b"beta" * 100]})
    gw.clock.advance(days=1)
    live = await _backup(gw, agent, "job-2", {"a": [b"alpha" * 100], "c": [b"gamma" * 100]})
    # Version 1: the manifest is one object, no pack holds it; each point has its chunks' packs only.
    assert (await gw.stored_manifest("acct-a", old))[:5] == MAGIC + b"\x01"
    assert await gw.segment_packs(old) == set()
    old_pack, live_pack = await _chunk_pack(gw, b"alpha" * 100), await _chunk_pack(gw, b"gamma" * 100)
    assert {p.pack_id for p in gw.store.state.packs.values()} == {old_pack.pack_id, live_pack.pack_id}
    assert gw.store.state.gc.point_packs == {
        old: {old_pack.pack_id},
        live: {old_pack.pack_id, live_pack.pack_id},
    }
    await _expire(gw, agent, old)
    gw.clock.advance(hours=2)
    # The first pack still holds "a" of the live point: nothing is condemned.
    assert (await collector.collect(_deps(gw))).packs_condemned == 0
    await _expire(gw, agent, live)
    report = await collector.collect(_deps(gw))
    assert report.packs_condemned == 2 and gw.store.state.gc.condemned.keys() == {old_pack.pack_id, live_pack.pack_id}
    gw.clock.set(max(old_pack.retain_until, live_pack.retain_until) + dt.timedelta(days=2))
    report = await collector.collect(_deps(gw))
    assert (report.packs_reclaimed, report.objects_deleted, report.points_reclaimed) == (2, 2, 2)
    assert _pack_keys(gw) == set()


async def test_a_version_1_point_reads_restores_and_bases_a_version_2_point_after_the_upgrade(
    trusted_v1_gw: GatewayHarness,
) -> None:
    gw = trusted_v1_gw
    agent = await gw.enrolled_agent("i-1")
    files = {f"f{i:03}": [f"file {i} ".encode() * 50] for i in range(60)}
    day1 = await _backup(gw, agent, "job-1", files)
    written = await gw.stored_manifest("acct-a", day1)
    assert written[:5] == MAGIC + b"\x01"

    # The gateway restarts with the default (segments on), on the same database and bucket.
    await gw.stop()
    gw.manifest_segments = True
    await gw.start()

    # The version 1 point reads as it was written, to every reader.
    assert await gw.point_manifest(day1) == written
    request = manifest_pb2.ReadPointManifestRequest(point_id=day1)
    assert b"".join([r.data async for r in gw.manifest_stub.ReadPointManifest(request)]) == written
    expected = {p: c[0] for p, c in files.items()}
    assert await _restore(gw, agent, "r-1", day1) == expected
    _finish(gw, "r-1")

    # Day 2 is synthesized from the version 1 base and written as version 2.
    gw.clock.advance(days=1)
    await gw.request_backup(agent, "job-2")
    key = await gw.key_of("acct-a")
    await gw.upload(agent, "job-2", [b"changed on day two"])
    changed = stamped("job-2", [file_entry("f010", key, [b"changed on day two"])])
    day2 = (await _commit(gw, agent, "job-2", changed, base=day1, deleted=["f020"], count=1 + 59)).point_id
    _finish(gw, "job-2")
    assert (await gw.stored_manifest("acct-a", day2))[:5] == MAGIC + b"\x02"
    assert len(await gw.segment_packs(day2)) == 1
    paths = [e.path for e in decode_manifest(await gw.point_manifest(day2))]
    assert paths == [""] + sorted(p for p in files if p != "f020")
    day2_files = {p: c for p, c in expected.items() if p != "f020"} | {"f010": b"changed on day two"}
    assert await _restore(gw, agent, "r-2", day2) == day2_files
