"""A restore's content: chunks checked before a file is created, decoded into a reused buffer as written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zstandard
from strongroom.agent.v1 import gateway_pb2
from strongroom_agent.restore.content import Contents, ContentWriter, Encoded
from strongroom_agent.restore.destination import EntryProblem
from strongroom_agent.wire import SentChunk

ZSTD = gateway_pb2.CHUNK_COMPRESSION_ZSTD
NONE = gateway_pb2.CHUNK_COMPRESSION_NONE


def zstd(cid: bytes, content: bytes) -> Encoded:
    return Encoded(cid, zstandard.compress(content), ZSTD, len(content))


def write(tmp_path: Path, writer: ContentWriter, chunks: list[Encoded]) -> bytes:
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        assert writer.write(fd, chunks) == sum(c.length for c in chunks)
    finally:
        os.close(fd)
    return path.read_bytes()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[type, bytes]]]:
    """Every ``os.writev`` call's pieces: (type, content)."""
    calls: list[list[tuple[type, bytes]]] = []
    real_writev = os.writev

    def writev(fd: int, buffers: list[bytes]) -> int:
        calls.append([(type(b), bytes(b)) for b in buffers])
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", writev)
    return calls


def test_chunks_fill_the_buffer_are_written_and_it_is_reused(
    tmp_path: Path, writes: list[list[tuple[type, bytes]]]
) -> None:
    """Decoded chunks share one buffer of 100 bytes: written when the next does not fit, then reused."""
    contents = [bytes([65 + n]) * size for n, size in enumerate([40, 50, 30, 250, 60, 20])]
    chunks = [zstd(bytes([n]), c) for n, c in enumerate(contents)]
    chunks[2] = Encoded(b"\x02", contents[2], NONE, 30)  # sent as is: not in the buffer
    writer = ContentWriter(size=100, into_buffer_min=0)
    assert write(tmp_path, writer, chunks) == b"".join(contents)
    # 40+50 go into the buffer, the stored 30 rides along, 250 (larger than the buffer) gets a buffer of its
    # own; 60 does not fit: what the buffer holds is written first, then 60+20 reuse it.
    assert [[content for _, content in call] for call in writes] == [contents[:4], contents[4:]]
    # The next file reuses the same buffer.
    again = [zstd(b"x", b"y" * 100)]
    assert write(tmp_path, writer, again) == b"y" * 100


def test_small_chunks_are_inflated_into_new_memory(tmp_path: Path, writes: list[list[tuple[type, bytes]]]) -> None:
    writer = ContentWriter(size=100, into_buffer_min=50)
    contents = [b"a" * 49, b"b" * 50, b"c" * 49]
    assert write(tmp_path, writer, [zstd(bytes([n]), c) for n, c in enumerate(contents)]) == b"".join(contents)
    assert [[kind for kind, _ in call] for call in writes] == [[bytes, memoryview, bytes]]  # 50 went via the buffer


@pytest.mark.parametrize("into_buffer_min", [0, 1000], ids=["into-buffer", "new-memory"])
def test_a_chunk_that_does_not_inflate_to_its_length_names_the_chunk(tmp_path: Path, into_buffer_min: int) -> None:
    good = zstd(b"\x01", b"good" * 10)
    frame = zstandard.compress(b"bad!" * 100)
    corrupt = Encoded(b"\x02", frame[:-8] + b"\0" * 8, ZSTD, 400)
    with pytest.raises(EntryProblem, match="chunk 02 of this file is damaged in storage \\(does not decode: corrupt"):
        write(tmp_path, ContentWriter(size=1000, into_buffer_min=into_buffer_min), [good, corrupt])


def test_a_files_chunks_are_checked_before_anything_is_written() -> None:
    content = b"content " * 50
    frame = zstandard.compress(content)
    contents = Contents.of(
        [
            SentChunk(b"\x01", frame, ZSTD, len(content)),
            SentChunk(b"\x02", b"", NONE, 0, "authentication failed"),
            SentChunk(b"\x03", frame, ZSTD, len(content) + 1),  # the header declares another length
            SentChunk(b"\x04", content, NONE, len(content) - 1),
        ]
    )
    [chunk] = contents.chunks_of([b"\x01"])
    assert (chunk.data, chunk.length) == (frame, len(content))
    for ids, reason in (
        ([b"\x01", b"\x02"], r"chunk 02 of this file is damaged in storage \(authentication failed\)"),
        ([b"\x03"], r"chunk 03 .* \(does not decode: zstd frame declares 400 bytes, expected 401\)"),
        ([b"\x04"], r"chunk 04 .* \(does not decode: content is 400 bytes, expected 399\)"),
        ([b"\x01", b"\x05"], "gateway did not return chunk 05"),
    ):
        with pytest.raises(EntryProblem, match=reason):
            contents.chunks_of(ids)
