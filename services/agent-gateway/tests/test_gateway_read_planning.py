"""ReadChunks reads by pack: coalesced ranged GETs, windows of bounded size, request order kept."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
from typing import Any

import grpc
import pytest
import zstandard
from gateway_helpers import Agent, GatewayHarness, chunk_id, file_entry
from strongroom.agent.v1 import gateway_pb2
from strongroom_gateway import points
from strongroom_gateway.points import chunk_reads, coalesce, plan_reads
from strongroom_gateway.ports import ChunkLocation


def loc(n: int, offset: int, length: int, key: str = "pack-a", raw: int | None = None) -> ChunkLocation:
    return ChunkLocation(
        chunk_id=n.to_bytes(32, "big"),
        pack_id=key,
        object_key=key,
        offset=offset,
        length=length,
        raw_length=length if raw is None else raw,
        compression=0,
        pack_format=2,
    )


def spans(ranges: list[points.ReadRange]) -> list[tuple[str, int, int, list[int]]]:
    return [(r.object_key, r.offset, r.length, [int.from_bytes(b.chunk_id, "big") for b in r.blobs]) for r in ranges]


def test_adjacent_and_nearby_blobs_of_a_pack_become_one_range() -> None:
    blobs = [loc(3, 300, 100), loc(1, 5, 100), loc(2, 105, 100), loc(4, 1000, 50)]
    assert spans(coalesce(blobs, max_gap=700, max_bytes=1 << 20)) == [("pack-a", 5, 1045, [1, 2, 3, 4])]
    # A gap wider than max_gap starts a new range.
    assert spans(coalesce(blobs, max_gap=500, max_bytes=1 << 20)) == [
        ("pack-a", 5, 395, [1, 2, 3]),
        ("pack-a", 1000, 50, [4]),
    ]


def test_ranges_never_span_packs_and_stop_at_max_bytes() -> None:
    blobs = [loc(1, 5, 100), loc(2, 5, 100, key="pack-b"), loc(3, 105, 100), loc(4, 205, 100), loc(5, 305, 900)]
    assert spans(coalesce(blobs, max_gap=1 << 20, max_bytes=250)) == [
        ("pack-a", 5, 200, [1, 3]),
        ("pack-a", 205, 100, [4]),
        ("pack-a", 305, 900, [5]),  # larger than max_bytes on its own: read alone
        ("pack-b", 5, 100, [2]),
    ]


def test_windows_bound_distinct_content_and_order_ranges_by_first_need() -> None:
    locations = {loc(n, 5 + 100 * n, 100).chunk_id: loc(n, 5 + 100 * n, 100) for n in range(10)}
    far = loc(99, 5, 100, key="pack-z")
    locations[far.chunk_id] = far
    ids = [locations[n.to_bytes(32, "big")].chunk_id for n in (9, 9, 8, 1, 99, 2, 3, 3, 4, 5, 6, 7, 0)]
    windows = plan_reads(ids, locations, window_bytes=450, max_gap=0, max_bytes=1 << 20)
    # Each window holds at most 450 bytes of distinct content (a repeated id counts once).
    assert [(w.start, w.end) for w in windows] == [(0, 5), (5, 10), (10, 13)]
    assert [spans(list(w.ranges)) for w in windows][0] == [
        ("pack-a", 805, 200, [8, 9]),
        ("pack-a", 105, 100, [1]),
        ("pack-z", 5, 100, [99]),
    ]
    assert spans(list(windows[1].ranges)) == [("pack-a", 205, 400, [2, 3, 4, 5])]
    # One chunk larger than the window still makes progress.
    big = loc(50, 5, 1000)
    assert [(w.start, w.end) for w in plan_reads([big.chunk_id], {big.chunk_id: big}, window_bytes=10)] == [(0, 1)]


class CountingObjects:
    """Counts and records the ranged GETs the gateway makes."""

    def __init__(self, gw: GatewayHarness) -> None:
        self.gets: list[tuple[str, int, int | None]] = []
        self._get = gw.objects.get
        gw.objects.get = self.get  # type: ignore[method-assign]

    async def get(
        self, key: str, *, offset: int = 0, length: int | None = None, version_id: str | None = None
    ) -> bytes:
        assert version_id is not None, "packs are read by their recorded version"
        self.gets.append((key, offset, length))
        await asyncio.sleep(0)
        return await self._get(key, offset=offset, length=length, version_id=version_id)


async def _restorable(gw: GatewayHarness, contents: list[bytes]) -> tuple[Agent, bytes, str]:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of(agent.account_id)
    for start in range(0, len(contents), 100):  # several UploadChunks calls: several packs
        await gw.upload(agent, "job-1", contents[start : start + 100])
    response = await gw.commit(agent, "job-1", [file_entry("f", key, contents)])
    await gw.request_restore(agent, "r-1", response.point_id)
    call = gw.stub.Connect(metadata=agent.md)
    try:
        while (await asyncio.wait_for(call.read(), 5)).run_restore.restore_job_id != "r-1":  # type: ignore[union-attr]
            pass
    finally:
        call.cancel()
    return agent, key, "r-1"


def _read(gw: GatewayHarness, agent: Agent, job: str, ids: list[bytes]) -> Any:
    return gw.stub.ReadChunks(gateway_pb2.ReadChunksRequest(restore_job_id=job, chunk_ids=ids), metadata=agent.md)


async def test_many_small_chunks_come_back_in_request_order_with_one_get_per_pack(gw: GatewayHarness) -> None:
    rng = random.Random(3)
    contents = [f"small file {i}\n".encode() * rng.randint(1, 200) for i in range(300)]
    agent, key, job = await _restorable(gw, contents)
    objects = CountingObjects(gw)
    ids = [chunk_id(key, c) for c in contents]
    order = list(range(300))
    rng.shuffle(order)
    order += order[:20]  # duplicates are served at every occurrence
    got = [(r.chunk_id, r.data) async for r in _read(gw, agent, job, [ids[i] for i in order])]
    assert got == [(ids[i], contents[i]) for i in order]
    assert len({key for key, _, _ in objects.gets}) == 3  # three packs (three uploads)
    assert len(objects.gets) == 3


async def test_reads_are_windowed_and_windows_reread_repeated_chunks(
    gw: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents = [os.urandom(3000) for _ in range(39)]
    agent, key, job = await _restorable(gw, contents)
    monkeypatch.setattr(chunk_reads, "READ_WINDOW_BYTES", 10_000)  # three chunks per window
    objects = CountingObjects(gw)
    ids = [chunk_id(key, c) for c in contents]
    got = [r.data async for r in _read(gw, agent, job, ids + ids[:1])]
    assert got == contents + contents[:1]
    # 13 windows of 3 contiguous chunks (one GET each), then a window that reads the first chunk again.
    assert len(objects.gets) == 14
    first, last = objects.gets[0], objects.gets[-1]
    assert last[:2] == first[:2] and last[2] is not None and first[2] is not None and 3 * last[2] == first[2]
    assert all(length is not None and length <= 3 * (3000 + 64) for _, _, length in objects.gets)


async def test_the_request_id_limit(gw: GatewayHarness) -> None:
    agent, key, job = await _restorable(gw, [b"one"])
    ids = [chunk_id(key, b"one")] * (points.MAX_READ_IDS_PER_REQUEST + 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in _read(gw, agent, job, ids):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_abandoned_read_cancels_its_fetches(gw: GatewayHarness) -> None:
    contents = [os.urandom(2000) for _ in range(200)]
    agent, key, job = await _restorable(gw, contents)
    call = _read(gw, agent, job, [chunk_id(key, c) for c in contents])
    first = await call.read()
    assert first.data == contents[0]
    call.cancel()
    await asyncio.sleep(0.1)
    # The gateway keeps serving: a new read of the same chunks works.
    assert [r.data async for r in _read(gw, agent, job, [chunk_id(key, contents[5])])] == [contents[5]]


async def test_a_corrupt_blob_in_a_coalesced_range_fails_the_read_clearly(gw: GatewayHarness) -> None:
    contents = [os.urandom(2000) for _ in range(10)]
    agent, key, job = await _restorable(gw, contents)
    target = gw.store.state.chunks[("acct-a", chunk_id(key, contents[4]))]
    data = bytearray(await gw.objects.get(target.object_key))
    data[target.offset + 50] ^= 0x01
    gw.objects.damage(target.object_key, bytes(data))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in _read(gw, agent, job, [chunk_id(key, c) for c in contents]):
            pass
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"stored chunk {chunk_id(key, contents[4]).hex()} is corrupt" in (err.value.details() or "")


def _read_batched(gw: GatewayHarness, agent: Agent, job: str, ids: list[bytes], message_bytes: int) -> Any:
    request = gateway_pb2.ReadChunksRequest(restore_job_id=job, chunk_ids=ids, max_message_bytes=message_bytes)
    return gw.stub.ReadChunks(request, metadata=agent.md)


async def test_an_old_style_request_gets_one_message_per_chunk(gw: GatewayHarness) -> None:
    contents = [f"chunk {i}\n".encode() * 20 for i in range(50)]
    agent, key, job = await _restorable(gw, contents)
    ids = [chunk_id(key, c) for c in contents]
    messages = [r async for r in _read(gw, agent, job, ids + ids[:2])]
    assert len(messages) == 52
    assert all(not m.chunks for m in messages)
    assert [(m.chunk_id, m.data) for m in messages] == list(zip(ids + ids[:2], contents + contents[:2], strict=True))


async def test_max_message_bytes_packs_consecutive_chunks_in_request_order(gw: GatewayHarness) -> None:
    rng = random.Random(5)
    contents = [os.urandom(rng.randint(100, 900)) for _ in range(300)]
    agent, key, job = await _restorable(gw, contents)
    ids = [chunk_id(key, c) for c in contents]
    order = list(range(300))
    rng.shuffle(order)
    order += order[:30]  # a repeated id is still answered at every occurrence
    limit = 8000
    messages = [r async for r in _read_batched(gw, agent, job, [ids[i] for i in order], limit)]
    flat = [(c.chunk_id, c.data, c.raw_length) for m in messages for c in m.chunks]
    assert flat == [(ids[i], contents[i], len(contents[i])) for i in order]
    # Batched messages leave the single-chunk fields unset and hold at least one chunk each.
    assert all(m.chunks and not m.chunk_id and not m.data for m in messages)
    assert all(sum(len(c.data) + 32 for c in m.chunks) <= limit for m in messages)
    assert len(messages) < len(order) / 4


async def test_a_chunk_larger_than_the_message_limit_travels_alone(
    gw: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents = [os.urandom(200), os.urandom(5000), os.urandom(200), os.urandom(200)]
    agent, key, job = await _restorable(gw, contents)
    ids = [chunk_id(key, c) for c in contents]
    messages = [r async for r in _read_batched(gw, agent, job, ids, 1000)]
    assert [[c.data for c in m.chunks] for m in messages] == [[contents[0]], [contents[1]], contents[2:]]
    # The gateway lowers a larger request to its own cap.
    monkeypatch.setattr(chunk_reads, "MAX_READ_MESSAGE_BYTES", 300)
    messages = [r async for r in _read_batched(gw, agent, job, ids, 1 << 30)]
    assert [[c.data for c in m.chunks] for m in messages] == [[c] for c in contents]


async def test_batched_messages_carry_each_chunks_compression_and_raw_length(gw: GatewayHarness) -> None:
    contents = [f"line {i} of a text file\n".encode() * 40 for i in range(20)] + [os.urandom(500)]
    agent, key, job = await _restorable(gw, contents)
    ids = [chunk_id(key, c) for c in contents]
    request = gateway_pb2.ReadChunksRequest(
        restore_job_id=job, chunk_ids=ids, accept_compressed=True, max_message_bytes=1 << 20
    )
    messages = [r async for r in gw.stub.ReadChunks(request, metadata=agent.md)]
    served = [c for m in messages for c in m.chunks]
    assert [c.chunk_id for c in served] == ids
    assert {c.compression for c in served} == {gateway_pb2.CHUNK_COMPRESSION_ZSTD}  # sent as stored
    decoded = [
        zstandard.decompress(c.data) if c.compression == gateway_pb2.CHUNK_COMPRESSION_ZSTD else c.data for c in served
    ]
    assert decoded == contents
    assert [c.raw_length for c in served] == [len(c) for c in contents]


def _read_tolerant(gw: GatewayHarness, agent: Agent, job: str, ids: list[bytes], *, compressed: bool = True) -> Any:
    request = gateway_pb2.ReadChunksRequest(
        restore_job_id=job,
        chunk_ids=ids,
        max_message_bytes=4 << 20,
        accept_compressed=compressed,
        tolerate_damage=True,
    )
    return gw.stub.ReadChunks(request, metadata=agent.md)


async def _served(call: Any) -> list[gateway_pb2.ServedChunk]:
    return [c async for m in call for c in m.chunks]


@pytest.mark.parametrize("compressed", [False, True], ids=["decoded", "sent-compressed"])
async def test_a_tolerant_read_reports_a_corrupt_blob_and_serves_the_rest(gw: GatewayHarness, compressed: bool) -> None:
    contents = [os.urandom(2000) for _ in range(10)]
    agent, key, job = await _restorable(gw, contents)
    ids = [chunk_id(key, c) for c in contents]
    target = gw.store.state.chunks[("acct-a", ids[4])]
    data = bytearray(await gw.objects.get(target.object_key))
    data[target.offset + 50] ^= 0x01
    gw.objects.damage(target.object_key, bytes(data))
    served = await _served(_read_tolerant(gw, agent, job, ids + ids[4:5], compressed=compressed))
    # Every position is answered in order; the damaged one (at both occurrences) carries the reason and no data.
    assert [c.chunk_id for c in served] == ids + ids[4:5]
    assert [i for i, c in enumerate(served) if c.damage] == [4, 10]
    assert {c.damage for c in served if c.damage} == {"authentication failed"}
    assert served[4].data == b"" and served[10].data == b""
    good = [c for c in served if not c.damage]
    assert all(c.raw_length == len(contents[ids.index(c.chunk_id)]) for c in good)
    if not compressed:
        assert [c.data for c in good] == [c for i, c in enumerate(contents) if i != 4]


async def test_a_tolerant_read_reports_unknown_ids_and_missing_or_short_packs(gw: GatewayHarness) -> None:
    contents = [os.urandom(2000) for _ in range(250)]  # three packs of up to 100 chunks
    agent, key, job = await _restorable(gw, contents)
    ids = [chunk_id(key, c) for c in contents]
    unknown = os.urandom(32)
    # The pack of chunk 0 is lost (its recorded object is gone); the pack of chunk 120 is cut short before it.
    lost = gw.store.state.chunks[("acct-a", ids[0])]
    gw.store.state.chunks[("acct-a", ids[0])] = dataclasses.replace(lost, object_key=lost.object_key + "-gone")
    short = gw.store.state.chunks[("acct-a", ids[120])]
    gw.objects.damage(short.object_key, (await gw.objects.get(short.object_key))[: short.offset + 10])
    served = await _served(_read_tolerant(gw, agent, job, [ids[0], unknown, ids[1], ids[120], ids[240]]))
    assert [c.chunk_id for c in served] == [ids[0], unknown, ids[1], ids[120], ids[240]]
    assert served[0].damage == "its pack is missing from storage"
    assert served[1].damage == "it is not stored for this account"
    assert served[3].damage.startswith("its pack is shorter than recorded")
    assert [c.damage for c in (served[2], served[4])] == ["", ""]
    assert [zstandard.decompress(c.data) if c.compression else c.data for c in (served[2], served[4])] == [
        contents[1],
        contents[240],
    ]


async def test_without_tolerate_damage_an_unknown_id_still_fails_the_call(gw: GatewayHarness) -> None:
    agent, key, job = await _restorable(gw, [b"one"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in _read_batched(gw, agent, job, [chunk_id(key, b"one"), os.urandom(32)], 4 << 20):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_preserialized_chunks_message_is_what_protobuf_writes() -> None:
    """``encode_chunks_message`` (sent through a pass-through serializer) equals building the message
    and serializing it, byte for byte: served, damaged, uncompressed, empty and multi-byte-length chunks."""
    opened = chunk_reads.OpenedChunk
    zstd = gateway_pb2.CHUNK_COMPRESSION_ZSTD
    none = gateway_pb2.CHUNK_COMPRESSION_NONE
    run = [
        opened(os.urandom(32), os.urandom(200_000), zstd, 300_000),
        opened(os.urandom(32), b"", 0, 0, "authentication failed"),
        opened(os.urandom(32), os.urandom(5), none, 5),
        opened(os.urandom(32), b"", none, 0),
        opened(os.urandom(32), os.urandom(127), zstd, 1 << 22),
    ]
    expected = gateway_pb2.ReadChunksResponse()
    for c in run:
        if c.damage:
            expected.chunks.add(chunk_id=c.chunk_id, damage=c.damage)
        else:
            expected.chunks.add(chunk_id=c.chunk_id, data=c.data, compression=c.compression, raw_length=c.raw_length)
    encoded = chunk_reads.encode_chunks_message(run)
    assert encoded == expected.SerializeToString()
    assert gateway_pb2.ReadChunksResponse.FromString(encoded) == expected
    single = gateway_pb2.ReadChunksResponse(
        chunk_id=run[0].chunk_id, data=run[0].data, compression=zstd, raw_length=300_000
    )
    assert b"".join(chunk_reads._chunk_fields(run[0])) == single.SerializeToString()
