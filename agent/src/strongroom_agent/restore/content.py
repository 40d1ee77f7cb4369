"""A restore's file content: chunks as the gateway sent them, decoded as they are written.

A batch's chunks are kept as sent (compressed) and decoded only when a file
that needs them is written: a chunk of ``INTO_BUFFER_MIN`` or more straight
into one reused buffer per writer (``ContentWriter``), written from there with
``writev``; inflating such chunks into new memory cost three times the CPU
(page faults), and the batch's whole decoded content was held at once (ADR
0072). Smaller chunks are inflated for a group of files at a time
(``ContentWriter.inflate_small``: about ``SMALL_GROUP_BYTES`` of content, each
distinct chunk once) in one native call that releases the GIL once, not once
per chunk (ADR 0073).

Checks: before a file is created, every chunk it needs must have been sent,
undamaged, and declare (in its header, nothing inflated) the length the sum
of which is the file's size (``Contents.chunks_of``), and its small chunks
must have inflated to exactly that length (``Inflated.problem``); a large
chunk whose body then does not inflate to exactly its length fails the
write, and the file is removed by the destination.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from strongroom.agent.v1 import gateway_pb2

from strongroom_agent.chunking import decode_chunk, decode_zstd_frames, decode_zstd_into, decoded_length
from strongroom_agent.gateway_client import ChunkSent
from strongroom_agent.restore.destination import Destination, EntryProblem

# Decoded chunks fill one buffer of this size per writer before they are written (one writev);
# a larger chunk gets a buffer of its own (chunks are at most the chunker's maximum, 4 MiB by default).
DECODE_BUFFER_BYTES = 4 << 20
# A smaller chunk is inflated into new memory: the allocator serves it from memory it holds, and a
# stream reader per chunk cost more than that (decoding and writing 20,000 of the source tree's files:
# +12% CPU; the buffer's gain is on large chunks: -25% over 384 MiB of large files; ADR 0072).
INTO_BUFFER_MIN = 128 << 10
# The small chunks of consecutive files are inflated together until about this much content: one native
# call per group; kept under the agent's 1 MiB mmap threshold (``memory.py``) so its memory is reused
# rather than mapped and faulted in afresh per group.
SMALL_GROUP_BYTES = 768 << 10


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


class Inflated(NamedTuple):
    """Small chunks inflated for a group of files: content by chunk id, and why the others did not inflate."""

    content: dict[bytes, bytes | memoryview]
    damage: dict[bytes, str]

    def problem(self, chunks: Sequence[Encoded]) -> str | None:
        """The error of a file that needs one of the chunks that did not inflate; None when none of them."""
        if self.damage:
            for chunk in chunks:
                reason = self.damage.get(chunk.chunk_id)
                if reason is not None:
                    return damage_reason(chunk.chunk_id, f"does not decode: {reason}")
        return None


NOTHING_INFLATED = Inflated({}, {})


class ContentWriter:
    """Writes files' chunks, inflating the larger compressed ones into one reused buffer (one writer at a time).

    ``size``: the buffer; ``into_buffer_min``: smaller chunks are inflated into new memory.
    """

    def __init__(self, size: int = DECODE_BUFFER_BYTES, into_buffer_min: int = INTO_BUFFER_MIN) -> None:
        self._size = size
        self._into_buffer_min = into_buffer_min
        self._buffer: memoryview | None = None

    def small(self, chunk: Encoded) -> bool:
        """Whether ``chunk`` is inflated with its group's (``inflate_small``), not into the buffer."""
        return chunk.compression == gateway_pb2.CHUNK_COMPRESSION_ZSTD and chunk.length < self._into_buffer_min

    def inflate_small(self, chunks: Iterable[Encoded]) -> Inflated:
        """Inflate the small compressed ones of ``chunks`` (each distinct chunk once) in one native call.

        When that fails, they are inflated one at a time: the ones that do not
        inflate to exactly their length are named in ``damage`` with the reason,
        the others are kept. Memory: their content, at once (callers pass a
        group of about ``SMALL_GROUP_BYTES``).
        """
        small = {c.chunk_id: c for c in chunks if self.small(c) and c.length}
        if not small:
            return NOTHING_INFLATED
        group = list(small.values())
        content: dict[bytes, bytes | memoryview] = {}
        try:
            content.update(
                zip(small, decode_zstd_frames([c.data for c in group], [c.length for c in group]), strict=True)
            )
            return Inflated(content, {})
        except ValueError:
            pass
        damage: dict[bytes, str] = {}
        for chunk in group:  # which of them does not inflate, and why
            try:
                content[chunk.chunk_id] = decode_chunk(chunk.data, chunk.compression, chunk.length)
            except ValueError as exc:
                damage[chunk.chunk_id] = str(exc)
        return Inflated(content, damage)

    def write(self, fd: int, chunks: Sequence[Encoded], inflated: Inflated = NOTHING_INFLATED) -> int:
        """Decode ``chunks`` and write them to ``fd`` in order; the bytes written.

        A small compressed chunk's content is taken from ``inflated`` (the
        file's group's, ``inflate_small``) when it is there, else inflated
        here. EntryProblem (the chunk named) when one does not inflate to its
        length; what was written of the file before stays for the caller to
        discard.
        """
        buffer = self._buffer
        pieces: list[bytes | memoryview] = []
        used = written = 0
        ready = inflated.content
        for chunk in chunks:
            length = chunk.length
            written += length
            if chunk.compression != gateway_pb2.CHUNK_COMPRESSION_ZSTD:
                pieces.append(chunk.data)
                continue
            try:
                if length < self._into_buffer_min:
                    content = ready.get(chunk.chunk_id)
                    pieces.append(decode_chunk(chunk.data, chunk.compression, length) if content is None else content)
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
