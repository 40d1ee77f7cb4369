"""Chunk payload verification: keyed ids, compression, bounded decompression."""

from __future__ import annotations

import blake3
import pytest
import zstandard
from strongroom_gateway.chunks import ChunkRejected, UploadedPayload, verify_payload, verify_uploads
from strongroom_gateway.packfile import COMPRESSION_NONE, COMPRESSION_ZSTD

KEY = bytes(range(32))


def test_zstd_payload_verifies_and_returns_raw_content() -> None:
    content = b"hello world" * 1000
    cid = blake3.blake3(content, key=KEY).digest()
    payload = zstandard.ZstdCompressor().compress(content)
    assert verify_payload(KEY, cid, payload, COMPRESSION_ZSTD, len(content)) == content


def test_id_with_another_key_is_refused() -> None:
    content = b"data"
    other_key_id = blake3.blake3(content, key=bytes(32)).digest()
    with pytest.raises(ChunkRejected, match="mismatch"):
        verify_payload(KEY, other_key_id, content, COMPRESSION_NONE, len(content))


def test_unkeyed_hash_is_not_an_id() -> None:
    content = b"data"
    with pytest.raises(ChunkRejected, match="mismatch"):
        verify_payload(KEY, blake3.blake3(content).digest(), content, COMPRESSION_NONE, len(content))


def test_decompression_stops_at_raw_length() -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(50 << 20))
    with pytest.raises(ChunkRejected, match="raw_length"):
        verify_payload(KEY, bytes(32), bomb, COMPRESSION_ZSTD, 1024)


def test_corrupt_zstd_is_refused() -> None:
    with pytest.raises(ChunkRejected, match="zstd"):
        verify_payload(KEY, bytes(32), b"not zstd at all", COMPRESSION_ZSTD, 10)


def test_short_id_is_refused() -> None:
    with pytest.raises(ChunkRejected, match="32 bytes"):
        verify_payload(KEY, b"abc", b"x", COMPRESSION_NONE, 1)


def test_decompression_stops_at_raw_length_when_the_frame_states_no_size() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(50 << 20))
    assert zstandard.frame_content_size(bomb) == -1
    with pytest.raises(ChunkRejected, match="raw_length"):
        verify_payload(KEY, bytes(32), bomb, COMPRESSION_ZSTD, 1024)


def test_a_frame_without_a_size_still_verifies() -> None:
    content = b"no size in the header " * 500
    payload = zstandard.ZstdCompressor(write_content_size=False).compress(content)
    cid = blake3.blake3(content, key=KEY).digest()
    assert verify_payload(KEY, cid, payload, COMPRESSION_ZSTD, len(content)) == content


def test_a_frame_declaring_another_size_is_refused_before_inflating() -> None:
    payload = zstandard.ZstdCompressor().compress(bytes(1 << 20))
    with pytest.raises(ChunkRejected, match="declares 1048576 bytes"):
        verify_payload(KEY, bytes(32), payload, COMPRESSION_ZSTD, 1000)


def test_verify_uploads_reports_how_many_passed_before_the_first_refusal() -> None:
    good = [UploadedPayload(blake3.blake3(c, key=KEY).digest(), COMPRESSION_NONE, len(c), c) for c in (b"a", b"b")]
    forged = UploadedPayload(blake3.blake3(b"x", key=KEY).digest(), COMPRESSION_NONE, 1, b"y")
    assert verify_uploads(KEY, good) == (2, None)
    passed, refusal = verify_uploads(KEY, [*good, forged, *good])
    assert passed == 2
    assert isinstance(refusal, ChunkRejected) and "mismatch" in str(refusal)
