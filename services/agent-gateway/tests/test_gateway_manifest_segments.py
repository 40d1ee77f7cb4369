"""Manifest format version 2 (ADR 0065): a point whose manifest lists segments reads, through
``read_point_manifest`` and the catalog's ManifestService, as exactly the version 1 record stream.

The segments are stored as blobs of the account's packs (uploaded like chunks); the manifest object
is the sealed segment list. Run over the in-memory fakes and over real PostgreSQL + S3 (versitygw).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator

import pytest
from gateway_helpers import GatewayHarness, dir_entry, file_entry, real_harness
from strongroom.common.v1 import common_pb2
from strongroom.gateway.v1 import manifest_pb2
from strongroom_gateway import manifests
from strongroom_gateway.manifests import seal_manifest
from strongroom_gateway.ports import Point
from strongroom_gateway.segments import CUT_MODULUS, cut_segments
from strongroom_platform.clock import SystemClock
from strongroom_platform.manifest import (
    MAGIC,
    ManifestFormatError,
    SegmentRef,
    encode_segment_list,
    manifest_records,
    record_path,
)
from strongroom_platform.testing import FakeClock
from strongroom_testing.fixtures import PgLogins, S3Config


@pytest.fixture(params=["memory", pytest.param("s3", marks=pytest.mark.integration)])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[GatewayHarness]:
    clock = FakeClock(SystemClock().now())  # S3 checks locks against real time
    if request.param == "memory":
        gw = GatewayHarness(clock)
        await gw.start()
        try:
            yield gw
        finally:
            await gw.stop()
        return
    s3_config: S3Config = request.getfixturevalue("s3_config")
    pg_logins: PgLogins = request.getfixturevalue("pg_logins")
    async with real_harness(s3_config, pg_logins, clock, "segments") as (gw, _, _):
        yield gw


@dataclasses.dataclass
class Segmented:
    point: Point  # the committed point (its version 1 manifest, as the gateway wrote it)
    v1: bytes
    segments: list[tuple[SegmentRef, bytes]]


async def _segmented_point(gw: GatewayHarness, files: int = 300) -> Segmented:
    """Commit a point, then store its record stream as segments (blobs uploaded in the same job)."""
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    contents = [os.urandom(3_000) for _ in range(4)]
    entries = [dir_entry(""), dir_entry("d")]
    entries += [file_entry(f"d/f{i:04}", key, [contents[i % 4]]) for i in range(files)]
    entries.append(common_pb2.FileEntry(path="link", type=common_pb2.ENTRY_TYPE_SYMLINK, link_target="d"))
    records = [(e.path.encode(), e.SerializeToString()) for e in entries]
    segments = list(cut_segments(key, records))
    await gw.upload(agent, "job-1", contents + [content for _, content in segments])
    point_id = (await gw.commit(agent, "job-1", entries)).point_id
    async with gw.store.transaction() as tx:
        point = await tx.get_point(point_id)
    assert point is not None
    return Segmented(point, await manifests.read_point_manifest(gw.objects, gw.keys, point, store=gw.store), segments)


async def _store_as(gw: GatewayHarness, point: Point, manifest: bytes) -> Point:
    """The point with ``manifest`` (SRMF bytes) sealed under a fresh key, as its manifest object."""
    key = f"{point.manifest_key}-v2"
    sealed = seal_manifest(await gw.data_key(point.account_id), point.point_id, manifest)
    version_id = await gw.objects.put(key, sealed)
    return dataclasses.replace(point, manifest_key=key, manifest_version_id=version_id)


async def test_a_segmented_manifest_reads_as_the_version_1_record_stream(harness: GatewayHarness) -> None:
    gw = harness
    made = await _segmented_point(gw)
    # Cut at path hashes: ~303 / 16 segments, each starting where the list says.
    assert 303 // (CUT_MODULUS * 4) <= len(made.segments) <= 303 // (CUT_MODULUS // 4)
    v2 = encode_segment_list(ref for ref, _ in made.segments)
    assert v2[:5] == MAGIC + b"\x02"
    point = await _store_as(gw, made.point, v2)
    data = await manifests.read_point_manifest(gw.objects, gw.keys, point, store=gw.store)
    assert data[:5] == MAGIC + b"\x01"
    assert list(manifest_records(data)) == list(manifest_records(made.v1))
    # The restore filter works on the expanded stream as on any version 1 manifest.
    kept = manifests.filter_entries(data, ["d/f0100"], [])
    assert [e.path for e in kept] == ["d/f0100"]
    assert [record_path(r) for r in manifest_records(data)][1:3] == [b"d", b"d/f0000"]


async def test_two_points_listing_the_same_segments_both_read_them(harness: GatewayHarness) -> None:
    gw = harness
    made = await _segmented_point(gw, files=120)
    v2 = encode_segment_list(ref for ref, _ in made.segments)
    first = await _store_as(gw, made.point, v2)
    second = await _store_as(gw, dataclasses.replace(made.point, manifest_key=made.point.manifest_key + "-b"), v2)
    for point in (first, second):
        data = await manifests.read_point_manifest(gw.objects, gw.keys, point, store=gw.store)
        assert list(manifest_records(data)) == list(manifest_records(made.v1))


async def test_missing_or_foreign_segments_and_version_3_are_refused_clearly(harness: GatewayHarness) -> None:
    gw = harness
    # Enough records that the keyed cut rule makes two segments or more whatever the account's key
    # (with 40 files, one segment ~6 % of the time, and the swap below had nothing to swap with).
    made = await _segmented_point(gw, files=200)
    refs = [ref for ref, _ in made.segments]
    assert len(refs) >= 2
    unknown = refs[0]._replace(segment_id=os.urandom(32))
    point = await _store_as(gw, made.point, encode_segment_list([unknown, *refs[1:]]))
    with pytest.raises(ManifestFormatError, match="not stored for the account"):
        await manifests.read_point_manifest(gw.objects, gw.keys, point, store=gw.store)
    # A stored blob that is not the segment the list describes (another segment's id in its place).
    swapped = refs[1]._replace(segment_id=refs[0].segment_id)
    point = await _store_as(
        gw,
        dataclasses.replace(made.point, manifest_key=made.point.manifest_key + "-s"),
        encode_segment_list([refs[0], swapped, *refs[2:]]),
    )
    with pytest.raises(ManifestFormatError, match="segment"):
        await manifests.read_point_manifest(gw.objects, gw.keys, point, store=gw.store)
    future = encode_segment_list(refs)
    point = await _store_as(
        gw, dataclasses.replace(made.point, manifest_key=made.point.manifest_key + "-3"), MAGIC + b"\x03" + future[5:]
    )
    with pytest.raises(ManifestFormatError, match="unsupported manifest format version 3 .*upgrade"):
        await manifests.read_point_manifest(gw.objects, gw.keys, point, store=gw.store)


async def test_the_catalog_gets_the_version_1_stream_of_a_segmented_point() -> None:
    gw = GatewayHarness(FakeClock(SystemClock().now()))
    await gw.start()
    try:
        made = await _segmented_point(gw, files=200)
        v2 = encode_segment_list(ref for ref, _ in made.segments)
        # Replace the committed point's manifest bytes in place (the point row pins that object).
        gw.objects.damage(made.point.manifest_key, seal_manifest(await gw.data_key("acct-a"), made.point.point_id, v2))
        request = manifest_pb2.ReadPointManifestRequest(point_id=made.point.point_id)
        data = b"".join([r.data async for r in gw.manifest_stub.ReadPointManifest(request)])
        assert list(manifest_records(data)) == list(manifest_records(made.v1))
    finally:
        await gw.stop()


async def _streamed(
    gw: GatewayHarness, point: Point, include: list[str], exclude: list[str], batch: int = 7
) -> list[list[str]]:
    got = manifests.stream_point_entries(gw.objects, gw.keys, point, include, exclude, store=gw.store, batch=batch)
    return [[e.path for e in entries] async for entries in got]


FILTERS = [([], []), (["d"], ["d/f0003"]), (["d/f0100"], []), (["d/f0050", "link"], []), (["nothing"], []), ([], ["d"])]


@pytest.mark.parametrize("groups", [(1,), (2, 5), (64, 256, 1024)])
async def test_streamed_entries_are_the_filtered_manifest_in_batches_for_both_versions(
    harness: GatewayHarness, groups: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifests, "SEGMENT_GROUPS", groups)
    gw = harness
    made = await _segmented_point(gw)
    v2 = await _store_as(gw, made.point, encode_segment_list(ref for ref, _ in made.segments))
    for include, exclude in FILTERS:
        expected = [e.path for e in manifests.filter_entries(made.v1, include, exclude)]
        for point in (made.point, v2):
            batches = await _streamed(gw, point, include, exclude)
            assert [p for b in batches for p in b] == expected, (include, exclude)
            assert all(len(b) == 7 for b in batches[:-1]) and all(batches)


async def test_a_streamed_segmented_manifest_reads_only_the_segments_of_its_include_paths(
    harness: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = harness
    made = await _segmented_point(gw)
    refs = [ref for ref, _ in made.segments]
    wanted = next(n for n, ref in enumerate(refs) if n > 3 and ref.first_path.startswith(b"d/f"))
    target = refs[wanted].first_path.decode()
    read: list[bytes] = []
    real = manifests.segments.read_segments

    async def counting(*args: object) -> dict[bytes, bytes]:
        ids = args[4]
        assert isinstance(ids, list)
        read.extend(ids)
        return await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(manifests.segments, "read_segments", counting)
    point = await _store_as(gw, made.point, encode_segment_list(refs))
    assert await _streamed(gw, point, [target], []) == [[target]]
    assert read == [refs[wanted].segment_id]
    read.clear()
    # A file that is the last of its segment: the next segment starts after it and is not read.
    last = [e.path for e in manifests.filter_entries(made.v1, [], [])].index(refs[wanted + 1].first_path.decode()) - 1
    name = [e.path for e in manifests.filter_entries(made.v1, [], [])][last]
    assert await _streamed(gw, point, [name], []) == [[name]]
    assert read == [refs[wanted].segment_id]


async def test_a_bad_segment_fails_the_stream_after_the_batches_before_it(
    harness: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifests, "SEGMENT_GROUPS", (2,))
    gw = harness
    made = await _segmented_point(gw)
    refs = [ref for ref, _ in made.segments]
    bad = refs[6]._replace(segment_id=os.urandom(32))
    point = await _store_as(gw, made.point, encode_segment_list([*refs[:6], bad, *refs[7:]]))
    got = manifests.stream_point_entries(gw.objects, gw.keys, point, [], [], store=gw.store, batch=1)
    sent: list[str] = []
    with pytest.raises(ManifestFormatError, match="not stored for the account"):
        async for entries in got:
            sent += [e.path for e in entries]
    assert sent and len(sent) <= sum(r.entry_count for r in refs[:6])
    # Out of path order across segments (each segment matches its own list entry).
    point = await _store_as(
        gw,
        dataclasses.replace(made.point, manifest_key=made.point.manifest_key + "-o"),
        encode_segment_list([refs[0], refs[2], refs[1], *refs[3:]]),
    )
    with pytest.raises(ManifestFormatError, match="out of path order"):
        await _streamed(gw, point, [], [])


async def test_a_stream_closed_early_stops_reading(harness: GatewayHarness) -> None:
    gw = harness
    made = await _segmented_point(gw)
    v2 = await _store_as(gw, made.point, encode_segment_list(ref for ref, _ in made.segments))
    for point in (made.point, v2):
        got = manifests.stream_point_entries(gw.objects, gw.keys, point, [], [], store=gw.store, batch=5)
        first = await anext(got)
        await got.aclose()
        assert len(first) == 5
