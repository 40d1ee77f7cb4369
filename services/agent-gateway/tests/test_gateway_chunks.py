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


def _cases() -> list[tuple[str, bytes, bytes, int, int]]:
    """(name, claimed id, payload, compression, raw_length): accepted and refused uploads, large and small."""
    import random

    rng = random.Random(74)
    text = b"".join(b"line %d of a log that compresses\n" % i for i in range(60_000))  # ~2 MB
    large, small, huge = text[: 1 << 20], text[:5000], (text * 3)[: 5 << 20]  # huge: past the scratch buffer
    noise = rng.randbytes(300_000)
    z = zstandard.ZstdCompressor(level=1)

    def cid(content: bytes) -> bytes:
        return blake3.blake3(content, key=KEY).digest()

    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(large)
    frame = z.compress(large)
    corrupt = frame[:100] + bytes(50) + frame[150:]
    return [
        ("large zstd", cid(large), frame, COMPRESSION_ZSTD, len(large)),
        ("huge zstd", cid(huge), z.compress(huge), COMPRESSION_ZSTD, len(huge)),
        ("small zstd", cid(small), z.compress(small), COMPRESSION_ZSTD, len(small)),
        ("large stored", cid(noise), noise, COMPRESSION_NONE, len(noise)),
        ("large zstd without a size", cid(large), unsized, COMPRESSION_ZSTD, len(large)),
        ("forged id", cid(small), frame, COMPRESSION_ZSTD, len(large)),
        ("short id", cid(large)[:31], frame, COMPRESSION_ZSTD, len(large)),
        ("declares another size", cid(large), frame, COMPRESSION_ZSTD, len(large) - 1),
        ("truncated frame", cid(large), frame[: len(frame) // 2], COMPRESSION_ZSTD, len(large)),
        ("corrupt frame", cid(large), corrupt, COMPRESSION_ZSTD, len(large)),
        ("not a frame", cid(large), b"not zstd at all" * 10_000, COMPRESSION_ZSTD, len(large)),
        (
            "bomb without a size",
            cid(large),
            zstandard.ZstdCompressor(write_content_size=False).compress(bytes(50 << 20)),
            COMPRESSION_ZSTD,
            1 << 20,
        ),
        ("past the maximum", cid(large), frame, COMPRESSION_ZSTD, 9 << 20),
        ("unknown compression", cid(large), frame, 7, len(large)),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_verify_upload_accepts_and_refuses_what_verify_payload_does(case: tuple[str, bytes, bytes, int, int]) -> None:
    """The upload path (large zstd chunks inflated into the thread's reused buffer, ADR 0074) keeps every check."""
    from strongroom_gateway.chunks import verify_upload

    _name, claimed, payload, compression, raw_length = case
    try:
        verify_payload(KEY, claimed, payload, compression, raw_length)
    except ChunkRejected as exc:
        with pytest.raises(ChunkRejected) as refused:
            verify_upload(KEY, claimed, memoryview(payload), compression, raw_length)
        # The same reason, in the same words where the check is the same one.
        for words in ("mismatch", "32 bytes", "declares", "maximum", "unknown compression"):
            assert (words in str(exc)) == (words in str(refused.value)), (str(exc), str(refused.value))
    else:
        verify_upload(KEY, claimed, memoryview(payload), compression, raw_length)
        verify_upload(KEY, claimed, payload, compression, raw_length)


def test_the_reused_buffer_holds_nothing_over_from_the_chunk_before() -> None:
    """A shorter chunk after a longer one is hashed over its own bytes only; one that inflates short is refused."""
    from strongroom_gateway.chunks import INTO_BUFFER_MIN, verify_upload

    z = zstandard.ZstdCompressor()
    longer, shorter = b"a" * (INTO_BUFFER_MIN * 4), b"a" * INTO_BUFFER_MIN
    for content in (longer, shorter, longer):
        verify_upload(
            KEY, blake3.blake3(content, key=KEY).digest(), z.compress(content), COMPRESSION_ZSTD, len(content)
        )
    # A frame that declares its size but ends short would leave the buffer's old bytes in place: refused.
    frame = z.compress(longer)
    with pytest.raises(ChunkRejected):
        verify_upload(KEY, blake3.blake3(longer, key=KEY).digest(), frame[:-3], COMPRESSION_ZSTD, len(longer))
