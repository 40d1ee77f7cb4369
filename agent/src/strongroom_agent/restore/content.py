"""A restore's file content: chunks as the gateway sent them, decoded as they are written.

A batch's chunks are kept as sent (compressed) and decoded only when a file
that needs them is written: a chunk of ``INTO_BUFFER_MIN`` or more straight
into one reused buffer per writer (``ContentWriter``), written from there with
``writev``; inflating such chunks into new memory cost three times the CPU
(page faults), and the batch's whole decoded content was held at once (ADR
0072). Smaller chunks are inflated into new memory, cheaper for them. A chunk
several files share is decoded once per file that uses it.

Checks: before a file is created, every chunk it needs must have been sent,
undamaged, and declare (in its header, nothing inflated) the length the sum
of which is the file's size (``Contents.chunks_of``); a chunk whose body then
does not inflate to exactly that length fails the write, and the file is
removed by the destination.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from strongroom.agent.v1 import gateway_pb2

from strongroom_agent.chunking import decode_chunk, decode_zstd_into, decoded_length
from strongroom_agent.gateway_client import ChunkSent
from strongroom_agent.restore.destination import Destination, EntryProblem

# Decoded chunks fill one buffer of this size per writer before they are written (one writev);
# a larger chunk gets a buffer of its own (chunks are at most the chunker's maximum, 4 MiB by default).
DECODE_BUFFER_BYTES = 4 << 20
# A smaller chunk is inflated into new memory: the allocator serves it from memory it holds, and a
# stream reader per chunk cost more than that (decoding and writing 20,000 of the source tree's files:
# +12% CPU; the buffer's gain is on large chunks: -25% over 384 MiB of large files; ADR 0072).
INTO_BUFFER_MIN = 128 << 10


def damage_reason(chunk_id: bytes, damage: str) -> str:
    """The per-file error of a file that needs a damaged chunk."""
    return f"chunk {chunk_id.hex()} of this file is damaged in storage ({damage})"


class Encoded(NamedTuple):
    """A chunk as sent, its header checked: ``length`` bytes once decoded."""

    chunk_id: bytes
    data: bytes | memoryview  # a view into its message when parsed out of one
    compression: int
    length: int


def encoded(chunk: ChunkSent) -> Encoded:
    """The chunk's data (read out of its message once) with its decoded length; EntryProblem when it is
    damaged or its header does not declare its recorded length."""
    cid = chunk.chunk_id
    if chunk.damage:
        raise EntryProblem(damage_reason(cid, chunk.damage))
    data = chunk.data
    try:
        return Encoded(cid, data, chunk.compression, decoded_length(data, chunk.compression, chunk.raw_length))
    except ValueError as exc:
        raise EntryProblem(damage_reason(cid, f"does not decode: {exc}")) from None


@dataclass
class Contents:
    """The chunks of a batch as sent, by id."""

    sent: dict[bytes, ChunkSent] = field(default_factory=dict)

    @classmethod
    def of(cls, chunks: Iterable[ChunkSent]) -> Contents:
        return cls({c.chunk_id: c for c in chunks})

    def chunks_of(self, ids: Sequence[bytes]) -> list[Encoded]:
        """A file's chunks in order, checked; EntryProblem naming the first one that is missing or damaged."""
        sent = self.sent
        out = []
        for cid in ids:
            chunk = sent.get(cid)
            if chunk is None:
                raise EntryProblem(f"gateway did not return chunk {cid.hex()}")
            out.append(encoded(chunk))
        return out


class ContentWriter:
    """Writes files' chunks, inflating the larger compressed ones into one reused buffer (one writer at a time).

    ``size``: the buffer; ``into_buffer_min``: smaller chunks are inflated into new memory.
    """

    def __init__(self, size: int = DECODE_BUFFER_BYTES, into_buffer_min: int = INTO_BUFFER_MIN) -> None:
        self._size = size
        self._into_buffer_min = into_buffer_min
        self._buffer: memoryview | None = None

    def write(self, fd: int, chunks: Sequence[Encoded]) -> int:
        """Decode ``chunks`` and write them to ``fd`` in order; the bytes written.

        EntryProblem (the chunk named) when one does not inflate to its length;
        what was written of the file before stays for the caller to discard.
        """
        buffer = self._buffer
        pieces: list[bytes | memoryview] = []
        used = written = 0
        for chunk in chunks:
            length = chunk.length
            written += length
            if chunk.compression != gateway_pb2.CHUNK_COMPRESSION_ZSTD:
                pieces.append(chunk.data)
                continue
            try:
                if length < self._into_buffer_min:
                    pieces.append(decode_chunk(chunk.data, chunk.compression, length))
                    continue
                if length > self._size:
                    target = memoryview(bytearray(length))
                else:
                    if buffer is None:
                        buffer = self._buffer = memoryview(bytearray(self._size))
                    if used + length > self._size:  # the buffer is full: write what it holds, then reuse it
                        Destination.write(fd, pieces)
                        pieces, used = [], 0
                    target = buffer[used : used + length]
                    used += length
                decode_zstd_into(chunk.data, target)
            except ValueError as exc:
                raise EntryProblem(damage_reason(chunk.chunk_id, f"does not decode: {exc}")) from None
            pieces.append(target)
        Destination.write(fd, pieces)
        return written
