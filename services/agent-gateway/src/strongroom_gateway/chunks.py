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
    if raw_length > MAX_CHUNK_SIZE:
        raise ChunkRejected(f"raw length {raw_length} exceeds the maximum chunk size {MAX_CHUNK_SIZE}")
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
    if len(expected_id) != CHUNK_ID_SIZE:
        raise ChunkRejected(f"chunk id must be {CHUNK_ID_SIZE} bytes, got {len(expected_id)}")
    content = decode_payload(payload, compression, raw_length)
    actual = chunk_id(key, content)
    if actual != expected_id:
        raise ChunkRejected(
            f"chunk id mismatch: claimed {expected_id.hex()[:16]}…, content hashes to {actual.hex()[:16]}…"
        )
    return content


@dataclass(frozen=True, slots=True)
class UploadedPayload:
    """A chunk as uploaded: ``payload`` in pack compression code ``compression``."""

    chunk_id: bytes
    compression: int
    raw_length: int
    payload: bytes


def verify_uploads(key: bytes, chunks: Sequence[UploadedPayload]) -> tuple[int, ChunkRejected | None]:
    """Verify ``chunks`` in order, in one call (a worker thread): how many passed before the first refusal, and it.

    One thread hop per batch rather than per chunk: for trees of small files the
    hops, not the hashing, were most of the gateway's CPU.
    """
    for index, chunk in enumerate(chunks):
        try:
            verify_payload(key, chunk.chunk_id, chunk.payload, chunk.compression, chunk.raw_length)
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
