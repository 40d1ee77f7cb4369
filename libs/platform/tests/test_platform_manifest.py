"""The manifest codec: streaming encode/decode, ranged reads from the object store, corruption."""

from __future__ import annotations

import os

import pytest
import zstandard
from strongroom.common.v1 import common_pb2
from strongroom_platform.manifest import (
    MAGIC,
    ManifestDecoder,
    ManifestEncoder,
    ManifestFormatError,
    decode_manifest,
    encode_manifest,
    iter_manifest_from_object,
)
from strongroom_platform.objectstore import ObjectNotFound
from strongroom_platform.testing import InMemoryObjectStore


def entries(n: int) -> list[common_pb2.FileEntry]:
    out = [common_pb2.FileEntry(path="", type=common_pb2.ENTRY_TYPE_DIRECTORY)]
    for i in range(n):
        out.append(
            common_pb2.FileEntry(
                path=f"dir/file-{i:07}",
                type=common_pb2.ENTRY_TYPE_FILE,
                size=i,
                chunk_ids=[os.urandom(32) for _ in range(i % 3)],
            )
        )
    return out


def paths(items: list[common_pb2.FileEntry]) -> list[str]:
    return [e.path for e in items]


def test_roundtrip_whole_and_in_pieces_of_any_size() -> None:
    original = entries(3000)
    data = encode_manifest(original)
    assert data[:5] == MAGIC + b"\x01"
    assert list(decode_manifest(data)) == original
    for piece in (1, 7, 4096):
        decoder = ManifestDecoder()
        got: list[common_pb2.FileEntry] = []
        for offset in range(0, len(data), piece):
            got.extend(decoder.feed(data[offset : offset + piece]))
        decoder.finish()
        assert got == original, piece


def test_streaming_encoder_output_is_a_manifest_and_refuses_disorder() -> None:
    encoder = ManifestEncoder()
    parts = [encoder.add(e) for e in entries(10)]
    parts.append(encoder.finish())
    assert paths(list(decode_manifest(b"".join(parts)))) == paths(entries(10))
    with pytest.raises(ValueError, match="sorted"):
        encoder = ManifestEncoder()
        encoder.add(common_pb2.FileEntry(path="b"))
        encoder.add(common_pb2.FileEntry(path="a"))
    # The body of an empty manifest is still a (valid) frame.
    assert list(decode_manifest(encode_manifest([]))) == []


def test_decoder_memory_is_bounded_by_the_piece_not_the_manifest() -> None:
    data = encode_manifest(entries(20_000))
    decoder = ManifestDecoder()
    largest = 0
    count = 0
    for offset in range(0, len(data), 16 << 10):
        count += len(decoder.feed(data[offset : offset + (16 << 10)]))
        largest = max(largest, len(decoder._buffer))
    decoder.finish()
    assert count == 20_001
    assert largest < 4096  # one partial record at most


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: b"XXXX" + d[4:], "bad magic"),
        (lambda d: d[:4] + b"\x02" + d[5:], "version 2"),
        (lambda d: d[:3], "bad magic|version"),
        (lambda d: d[: len(d) - 20], "truncated"),
        (lambda d: d + b"garbage", "after the end"),
        (lambda d: d[:5] + bytes(len(d) - 5), "corrupt"),
    ],
)
def test_corruption_is_an_error_never_a_short_manifest(mangle: object, message: str) -> None:
    data = encode_manifest(entries(500))
    with pytest.raises(ManifestFormatError, match=message):
        list(decode_manifest(mangle(data)))  # type: ignore[operator]


def test_truncated_record_inside_a_complete_frame_is_refused() -> None:
    body = zstandard.ZstdCompressor().compress(b"\x05abc")
    with pytest.raises(ManifestFormatError, match="truncated manifest record"):
        list(decode_manifest(MAGIC + b"\x01" + body))


async def test_iter_manifest_from_object_reads_in_ranges() -> None:
    store = InMemoryObjectStore()
    original = entries(5000)
    data = encode_manifest(original)
    await store.put("manifests/a/p", data)
    reads: list[int] = []
    get = store.get

    async def counting_get(
        key: str, *, offset: int = 0, length: int | None = None, version_id: str | None = None
    ) -> bytes:
        assert length is not None and length <= 10_000
        reads.append(length)
        return await get(key, offset=offset, length=length, version_id=version_id)

    store.get = counting_get  # type: ignore[method-assign]
    got = [e async for e in iter_manifest_from_object(store, "manifests/a/p", range_bytes=10_000)]
    assert got == original
    assert len(reads) == -(-len(data) // 10_000)

    await store.put("manifests/a/bad", data[:-30])
    with pytest.raises(ManifestFormatError):
        _ = [e async for e in iter_manifest_from_object(store, "manifests/a/bad", range_bytes=10_000)]
    with pytest.raises(ObjectNotFound):
        _ = [e async for e in iter_manifest_from_object(store, "manifests/a/none")]
