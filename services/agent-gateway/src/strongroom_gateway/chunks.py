"""Chunk ids and payload verification (docs/formats/chunk-id.md).

A chunk id is the 32-byte keyed BLAKE3 hash of the chunk's uncompressed
content, keyed with the account's 32-byte ``chunk_id_key``. The gateway
recomputes it for every uploaded and every served chunk; served chunks are
first authenticated and decrypted with the account's data key (pack version 2). Pure CPU: callers run
these functions in a worker thread.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import blake3
import zstandard
from strongroom.agent.v1 import gateway_pb2

from strongroom_gateway.crypto import DataKey
from strongroom_gateway.packfile import COMPRESSION_NONE, COMPRESSION_ZSTD, PackFormatError, open_blob

# The protocol's compression names and the pack format's codes (docs/formats/pack.md), both ways.
PACK_COMPRESSION: dict[int, int] = {
    gateway_pb2.CHUNK_COMPRESSION_NONE: COMPRESSION_NONE,
    gateway_pb2.CHUNK_COMPRESSION_ZSTD: COMPRESSION_ZSTD,
}
PROTO_COMPRESSION: dict[int, gateway_pb2.ChunkCompression.ValueType] = {
    COMPRESSION_NONE: gateway_pb2.CHUNK_COMPRESSION_NONE,
    COMPRESSION_ZSTD: gateway_pb2.CHUNK_COMPRESSION_ZSTD,
}

CHUNK_ID_SIZE = 32
CHUNK_KEY_SIZE = 32
# The agent's chunker never emits more than 4 MiB; a little slack for future tuning.
MAX_CHUNK_SIZE = 8 << 20


class ChunkRejected(ValueError):
    """The payload does not decode to content with the claimed length and id."""


def chunk_id(key: bytes, content: bytes) -> bytes:
    """The keyed BLAKE3 id of ``content``."""
    return blake3.blake3(content, key=key).digest()


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    # One per thread: a decompression context is costly to create and not thread-safe, and
    # creating one per chunk was a large part of verifying trees of small chunks.
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def decode_payload(payload: bytes, compression: int, raw_length: int) -> bytes:
    """The raw content of a stored/uploaded payload; never inflates beyond ``raw_length``."""
    content = _decode(payload, compression, raw_length)
    return content if isinstance(content, bytes) else bytes(content)


def _decode(payload: bytes | memoryview, compression: int, raw_length: int) -> bytes | memoryview:
    """``decode_payload`` of ``payload`` as given: a NONE payload's content is the payload itself."""
    if raw_length > MAX_CHUNK_SIZE:
        raise ChunkRejected(f"raw length {raw_length} exceeds the maximum chunk size {MAX_CHUNK_SIZE}")
    content: bytes | memoryview
    if compression == COMPRESSION_NONE:
        content = payload
    elif compression == COMPRESSION_ZSTD:
        try:
            declared = zstandard.frame_content_size(payload)
            if declared == raw_length:
                # The frame states its size: one-shot decoding allocates exactly that much.
                content = _decompressor().decompress(payload)
            elif declared == -1:
                # No size in the frame header: stream, reading at most one byte past raw_length.
                with _decompressor().stream_reader(io.BytesIO(payload)) as reader:
                    content = reader.read(raw_length + 1)
            else:
                raise ChunkRejected(f"zstd frame declares {declared} bytes, raw_length says {raw_length}")
        except zstandard.ZstdError as exc:
            raise ChunkRejected(f"payload is not a valid zstd frame: {exc}") from exc
    else:
        raise ChunkRejected(f"unknown compression code {compression}")
    if len(content) != raw_length:
        raise ChunkRejected(f"content is {len(content)} bytes, raw_length says {raw_length}")
    return content


def verify_payload(key: bytes, expected_id: bytes, payload: bytes, compression: int, raw_length: int) -> bytes:
    """Decode the payload and check its id; return the raw content. Raises ChunkRejected."""
    _check_id_size(expected_id)
    content = decode_payload(payload, compression, raw_length)
    _check_id(key, expected_id, content)
    return content


def _check_id_size(expected_id: bytes) -> None:
    if len(expected_id) != CHUNK_ID_SIZE:
        raise ChunkRejected(f"chunk id must be {CHUNK_ID_SIZE} bytes, got {len(expected_id)}")


def _check_id(key: bytes, expected_id: bytes, content: bytes | memoryview) -> None:
    actual = blake3.blake3(content, key=key).digest()
    if actual != expected_id:
        raise ChunkRejected(
            f"chunk id mismatch: claimed {expected_id.hex()[:16]}…, content hashes to {actual.hex()[:16]}…"
        )


# An uploaded zstd chunk of at least INTO_BUFFER_MIN raw bytes is inflated into its verifying
# thread's one reused buffer and hashed there (ADR 0074): inflated into new memory and freed
# right after hashing, every page of it was faulted in again (ADR 0072 measured three times the
# CPU for 1 MiB chunks on the agent's restore). Smaller chunks come from the heap without
# faults, and a stream reader per chunk costs more than the allocation.
INTO_BUFFER_MIN = 128 << 10
# The agent's chunker cuts at most 4 MiB; a larger chunk (up to MAX_CHUNK_SIZE) gets a buffer of its own.
SCRATCH_BYTES = 4 << 20


def _scratch(size: int) -> memoryview:
    """``size`` bytes of this thread's reused buffer (a buffer of its own past ``SCRATCH_BYTES``)."""
    if size > SCRATCH_BYTES:
        return memoryview(bytearray(size))
    buffer: bytearray | None = getattr(_local, "scratch", None)
    if buffer is None:
        buffer = _local.scratch = bytearray(SCRATCH_BYTES)
    return memoryview(buffer)[:size]


def _inflate_into(frame: bytes | memoryview, out: memoryview) -> None:
    """Inflate the zstd ``frame`` into ``out``, which it must fill exactly; ChunkRejected otherwise.

    Never writes past ``out``: a frame holding more is found by one read past its end.
    """
    reader = _decompressor().stream_reader(frame)
    filled = 0
    try:
        while filled < len(out):
            n = reader.readinto(out[filled:])
            if n == 0:
                break
            filled += n
        # One read past the end drives the frame to its end (its last block and checksum) and finds any excess.
        beyond = reader.readinto(bytearray(1))
    except zstandard.ZstdError as exc:
        raise ChunkRejected(f"payload is not a valid zstd frame: {exc}") from exc
    if beyond:
        raise ChunkRejected(f"content is more than raw_length {len(out)} bytes")
    if filled != len(out):
        raise ChunkRejected(f"content is {filled} bytes, raw_length says {len(out)}")


def verify_upload(
    key: bytes, expected_id: bytes, payload: bytes | memoryview, compression: int, raw_length: int
) -> None:
    """``verify_payload`` for an uploaded chunk, whose content is not needed afterwards: the same checks, and
    a large zstd chunk that declares its size is inflated into the thread's reused buffer. Raises ChunkRejected.
    """
    if compression == COMPRESSION_ZSTD and INTO_BUFFER_MIN <= raw_length <= MAX_CHUNK_SIZE:
        _check_id_size(expected_id)
        try:
            declared = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as exc:
            raise ChunkRejected(f"payload is not a valid zstd frame: {exc}") from exc
        if declared == raw_length:
            content = _scratch(raw_length)
            _inflate_into(payload, content)
            _check_id(key, expected_id, content)
            return
    # Anything else (small, stored, no declared size, a refusal to word) as every other verification does.
    _check_id_size(expected_id)
    _check_id(key, expected_id, _decode(payload, compression, raw_length))


@dataclass(frozen=True, slots=True)
class UploadedPayload:
    """A chunk as uploaded: ``payload`` (a view into its received message) in pack compression code ``compression``."""

    chunk_id: bytes
    compression: int
    raw_length: int
    payload: bytes | memoryview


def verify_uploads(key: bytes, chunks: Sequence[UploadedPayload]) -> tuple[int, ChunkRejected | None]:
    """Verify ``chunks`` in order, in one call (a worker thread): how many passed before the first refusal, and it.

    One thread hop per batch rather than per chunk: for trees of small files the
    hops, not the hashing, were most of the gateway's CPU.
    """
    for index, chunk in enumerate(chunks):
        try:
            verify_upload(key, chunk.chunk_id, chunk.payload, chunk.compression, chunk.raw_length)
        except ChunkRejected as exc:
            return index, exc
    return len(chunks), None


def verify_stored(
    chunk_id_key: bytes,
    data_key: DataKey | None,
    pack_version: int,
    expected_id: bytes,
    stored: bytes,
    compression: int,
    raw_length: int,
) -> bytes:
    """Open a blob read from a pack (decrypt and authenticate), then verify it like an upload.

    Raises ChunkRejected when the blob does not authenticate (tampered, moved
    from another account or chunk, wrong key) or does not hash to its id.
    """
    try:
        payload = open_blob(data_key, pack_version, expected_id, compression, raw_length, stored)
    except PackFormatError as exc:
        raise ChunkRejected(str(exc)) from None
    return verify_payload(chunk_id_key, expected_id, payload, compression, raw_length)
