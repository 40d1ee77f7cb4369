"""Content-defined chunking, keyed chunk ids and chunk compression.

A chunk id is the 32-byte keyed BLAKE3 hash of the chunk's uncompressed
content, with the account's ``chunk_id_key``; chunk boundaries come from
FastCDC with the account's gear ``chunker_seed``. Both must match what the
gateway verifies, so they come only from ``RepositoryParameters``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import blake3
import zstandard
from pyfastcdc import FastCDC
from strongroom.agent.v1 import gateway_pb2

CHUNK_ID_LENGTH = 32
# Level 1: on the benchmark data set it stores 1.3% more than level 3 for 21% less compression
# CPU, which the agent spends on the host it protects (ADR 0018).
ZSTD_LEVEL = 1

# pyfastcdc's accepted ranges.
_MIN_RANGE = (64, 1 << 20)
_AVG_RANGE = (256, 4 << 20)
_MAX_RANGE = (1024, 16 << 20)


class InvalidRepositoryParameters(ValueError):
    """The job's repository parameters cannot be chunked with."""


@dataclass(frozen=True)
class ChunkParams:
    """FastCDC sizes, gear seed and chunk-id key of one account's repository."""

    min_size: int
    avg_size: int
    max_size: int
    key: bytes
    seed: int

    @classmethod
    def from_proto(cls, params: gateway_pb2.RepositoryParameters) -> ChunkParams:
        result = cls(
            min_size=params.chunker_min_size,
            avg_size=params.chunker_avg_size,
            max_size=params.chunker_max_size,
            key=bytes(params.chunk_id_key),
            seed=params.chunker_seed,
        )
        result.validate()
        return result

    def validate(self) -> None:
        if len(self.key) != CHUNK_ID_LENGTH:
            raise InvalidRepositoryParameters(f"chunk_id_key must be 32 bytes, got {len(self.key)}")
        for name, value, (low, high) in (
            ("chunker_min_size", self.min_size, _MIN_RANGE),
            ("chunker_avg_size", self.avg_size, _AVG_RANGE),
            ("chunker_max_size", self.max_size, _MAX_RANGE),
        ):
            if not low <= value <= high:
                raise InvalidRepositoryParameters(f"{name} {value} is outside [{low}, {high}]")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise InvalidRepositoryParameters("chunker sizes must satisfy min <= avg <= max")

    def chunker(self) -> FastCDC:
        """The FastCDC of these parameters (shared: it is read-only once built, each cut has its own state)."""
        return _fastcdc(self.min_size, self.avg_size, self.max_size, self.seed)


@functools.lru_cache(maxsize=8)
def _fastcdc(min_size: int, avg_size: int, max_size: int, seed: int) -> FastCDC:
    # A seeded FastCDC builds its gear tables on creation (~11 us): once per file was ~1 s of
    # GIL-held CPU on the benchmark tree.
    return FastCDC(avg_size, min_size=min_size, max_size=max_size, seed=seed)


def chunk_id(key: bytes, data: bytes | memoryview) -> bytes:
    """The keyed BLAKE3 id of a chunk's uncompressed content."""
    return blake3.blake3(data, key=key).digest()


def chunk_buffer(params: ChunkParams, data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(id, content) of the chunks of an in-memory buffer (used for tests and small inputs)."""
    for chunk in params.chunker().cut_buf(data):
        content = bytes(chunk.data)
        yield chunk_id(params.key, content), content


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    # A ZstdCompressor must not be shared between threads; one per worker thread.
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        _local.compressor = compressor
    return compressor


def compress(data: bytes) -> tuple[gateway_pb2.ChunkCompression.ValueType, bytes]:
    """zstd at ``ZSTD_LEVEL``, or the content itself when compression does not make it smaller."""
    compressed = _compressor().compress(data)
    if len(compressed) < len(data):
        return gateway_pb2.CHUNK_COMPRESSION_ZSTD, compressed
    return gateway_pb2.CHUNK_COMPRESSION_NONE, data


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = zstandard.ZstdDecompressor()
        _local.decompressor = decompressor
    return decompressor


def decode_chunk(data: bytes | memoryview, compression: int, raw_length: int) -> bytes | memoryview:
    """The content of a chunk the gateway sent encoded as ``compression``.

    ValueError unless it decodes to exactly ``raw_length`` bytes (checked
    before anything is inflated, ``decoded_length``). UNSPECIFIED is what a
    gateway that does not know ``accept_compressed`` sends: the content
    itself, no length given.
    """
    length = decoded_length(data, compression, raw_length)
    if compression != gateway_pb2.CHUNK_COMPRESSION_ZSTD:
        return data
    try:
        content = _decompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise ValueError(f"corrupt zstd frame: {exc}") from None
    if len(content) != length:
        raise ValueError(f"content is {len(content)} bytes, expected {length}")
    return content


def decoded_length(data: bytes | memoryview, compression: int, raw_length: int) -> int:
    """The length a chunk sent as ``compression`` decodes to, from its header alone (nothing is inflated).

    ValueError for an unknown compression, a zstd frame that is not one or
    declares another length than ``raw_length``, and NONE content that is not
    ``raw_length`` bytes. UNSPECIFIED (no length given): ``len(data)``.
    """
    if compression == gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED:
        return len(data)
    if compression == gateway_pb2.CHUNK_COMPRESSION_ZSTD:
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise ValueError(f"not a zstd frame: {exc}") from None
        if declared != raw_length:
            raise ValueError(f"zstd frame declares {declared} bytes, expected {raw_length}")
    elif compression == gateway_pb2.CHUNK_COMPRESSION_NONE:
        if len(data) != raw_length:
            raise ValueError(f"content is {len(data)} bytes, expected {raw_length}")
    else:
        raise ValueError(f"unknown compression code {compression}")
    return raw_length


def decode_zstd_into(frame: bytes | memoryview, out: memoryview) -> None:
    """Inflate the zstd ``frame`` into ``out``, which it must fill exactly (no new buffer: the caller's is reused).

    Call ``decoded_length`` first: it checks the declared length before
    anything is inflated, and ``out`` is that many bytes. ValueError when the
    frame is corrupt, ends short of ``out`` or holds more. Inflating into fresh
    memory per chunk cost three times the CPU of inflating into a reused buffer
    for 1 MiB chunks (page faults; ADR 0072).
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
        raise ValueError(f"corrupt zstd frame: {exc}") from None
    if beyond:
        raise ValueError(f"content is more than the expected {len(out)} bytes")
    if filled != len(out):
        raise ValueError(f"content is {filled} bytes, expected {len(out)}")
