"""FastCDC chunking with the account's seed, keyed ids and compression."""

from __future__ import annotations

import random

import blake3
import pytest
import zstandard
from strongroom.agent.v1 import gateway_pb2
from strongroom_agent.chunking import (
    ChunkParams,
    InvalidRepositoryParameters,
    chunk_buffer,
    chunk_id,
    compress,
    decode_chunk,
    decode_zstd_into,
    decoded_length,
)

KEY = bytes(range(32))
PARAMS = ChunkParams(min_size=16 << 10, avg_size=64 << 10, max_size=256 << 10, key=KEY, seed=42)


def data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def test_chunking_is_deterministic_and_covers_the_input() -> None:
    buf = data(8 << 20)
    first = list(chunk_buffer(PARAMS, buf))
    second = list(chunk_buffer(PARAMS, buf))
    assert first == second
    assert b"".join(content for _id, content in first) == buf
    sizes = [len(content) for _id, content in first]
    assert all(PARAMS.min_size <= s <= PARAMS.max_size for s in sizes[:-1])
    assert 40 < len(first) < 400  # around 8 MiB / (avg + min)


def test_inserting_bytes_at_the_start_keeps_most_chunk_ids() -> None:
    buf = data(16 << 20)
    before = [cid for cid, _ in chunk_buffer(PARAMS, buf)]
    after = [cid for cid, _ in chunk_buffer(PARAMS, b"a few inserted bytes" + buf)]
    unchanged = set(before) & set(after)
    assert len(unchanged) >= len(before) - 3
    assert after[-1] == before[-1]


def test_stream_chunking_matches_buffer_chunking() -> None:
    import io

    buf = data(3 << 20, 5)
    streamed = [bytes(c.data) for c in PARAMS.chunker().cut_stream(io.BytesIO(buf))]
    assert streamed == [content for _id, content in chunk_buffer(PARAMS, buf)]


def test_seed_and_key_change_boundaries_and_ids() -> None:
    buf = data(4 << 20)
    base = list(chunk_buffer(PARAMS, buf))
    other_seed = list(chunk_buffer(ChunkParams(PARAMS.min_size, PARAMS.avg_size, PARAMS.max_size, KEY, 43), buf))
    assert [len(c) for _, c in base] != [len(c) for _, c in other_seed]
    other_key = ChunkParams(PARAMS.min_size, PARAMS.avg_size, PARAMS.max_size, bytes(32), 42)
    assert {i for i, _ in base}.isdisjoint({i for i, _ in chunk_buffer(other_key, buf)})


def test_chunk_id_is_keyed_blake3() -> None:
    assert chunk_id(KEY, b"hello") == blake3.blake3(b"hello", key=KEY).digest()
    assert len(chunk_id(KEY, b"")) == 32
    assert chunk_id(KEY, b"hello") != blake3.blake3(b"hello").digest()


def test_compress_keeps_incompressible_content_raw() -> None:
    text = b"the same line again\n" * 1000
    kind, payload = compress(text)
    assert kind == gateway_pb2.CHUNK_COMPRESSION_ZSTD and len(payload) < len(text)
    assert zstandard.ZstdDecompressor().decompress(payload) == text
    noise = data(100_000)
    assert compress(noise) == (gateway_pb2.CHUNK_COMPRESSION_NONE, noise)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"chunk_id_key": b"x" * 31}, "chunk_id_key"),
        ({"chunker_avg_size": 0}, "chunker_avg_size"),
        ({"chunker_min_size": 1 << 21}, "chunker_min_size"),
        ({"chunker_min_size": 300_000}, "min <= avg <= max"),
    ],
)
def test_invalid_repository_parameters(change: dict[str, object], message: str) -> None:
    proto = gateway_pb2.RepositoryParameters(
        chunker_min_size=PARAMS.min_size,
        chunker_avg_size=PARAMS.avg_size,
        chunker_max_size=PARAMS.max_size,
        chunk_id_key=KEY,
        chunker_seed=42,
    )
    for name, value in change.items():
        setattr(proto, name, value)
    with pytest.raises(InvalidRepositoryParameters, match=message):
        ChunkParams.from_proto(proto)
    ChunkParams.from_proto(
        gateway_pb2.RepositoryParameters(
            chunker_min_size=PARAMS.min_size,
            chunker_avg_size=PARAMS.avg_size,
            chunker_max_size=PARAMS.max_size,
            chunk_id_key=KEY,
        )
    )


def test_decode_chunk_checks_the_length_before_inflating() -> None:
    content = b"restore me " * 1000
    frame = zstandard.ZstdCompressor().compress(content)
    assert decode_chunk(frame, gateway_pb2.CHUNK_COMPRESSION_ZSTD, len(content)) == content
    assert decode_chunk(content, gateway_pb2.CHUNK_COMPRESSION_NONE, len(content)) == content
    # What a gateway without accept_compressed sends: the content, no length.
    assert decode_chunk(content, gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED, 0) == content
    with pytest.raises(ValueError, match="declares 11000 bytes, expected 10"):
        decode_chunk(frame, gateway_pb2.CHUNK_COMPRESSION_ZSTD, 10)
    with pytest.raises(ValueError, match="not a zstd frame"):
        decode_chunk(b"garbage", gateway_pb2.CHUNK_COMPRESSION_ZSTD, 7)
    with pytest.raises(ValueError, match="corrupt zstd frame"):
        decode_chunk(frame[:-8] + b"\0" * 8, gateway_pb2.CHUNK_COMPRESSION_ZSTD, len(content))
    with pytest.raises(ValueError, match="content is 11000 bytes, expected 5"):
        decode_chunk(content, gateway_pb2.CHUNK_COMPRESSION_NONE, 5)
    with pytest.raises(ValueError, match="unknown compression code 9"):
        decode_chunk(content, 9, len(content))


def test_decode_zstd_into_fills_the_callers_buffer_exactly() -> None:
    content = b"restore me " * 1000
    frame = zstandard.ZstdCompressor().compress(content)
    assert decoded_length(frame, gateway_pb2.CHUNK_COMPRESSION_ZSTD, len(content)) == len(content)
    buffer = bytearray(len(content) + 5)
    decode_zstd_into(frame, memoryview(buffer)[: len(content)])
    assert bytes(buffer[: len(content)]) == content and buffer[len(content) :] == bytes(5)
    for bad, reason in (
        (frame[:-8] + b"\0" * 8, "corrupt zstd frame"),  # the last block damaged
        (frame[:-3], "content is 0 bytes, expected 11000"),  # cut short: its last block is missing
        (frame + b"more", "corrupt zstd frame"),  # bytes beyond the frame
    ):
        with pytest.raises(ValueError, match=reason):
            decode_zstd_into(bad, memoryview(bytearray(len(content))))
    # A frame that holds more than its buffer (its header checked against another length) is refused.
    with pytest.raises(ValueError, match="content is more than the expected 10 bytes"):
        decode_zstd_into(frame, memoryview(bytearray(10)))
    with pytest.raises(ValueError, match="declares 11000 bytes, expected 10"):
        decoded_length(frame, gateway_pb2.CHUNK_COMPRESSION_ZSTD, 10)
    assert decoded_length(content, gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED, 0) == len(content)
