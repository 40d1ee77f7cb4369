"""The pack object: many chunks in one object-store object (docs/formats/pack.md).

Byte layout (all integers little-endian):

    header   magic b"SRPK" | format version u8 (= 1)
    blobs    the chunk payloads as uploaded (zstd frame or raw bytes), back to back
    index    magic b"SRPX" | index version u8 (= 1) | entry count u32 |
             entries: chunk id (32 bytes) | compression u8 | offset u64 | length u32 | raw length u32
    trailer  index length u32 (bytes of the index section) | magic b"SRPE"

The pack id is the lowercase hex SHA-256 of the whole object, so a pack can be
verified without the database. Readers refuse unknown magics and versions.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

HEADER_MAGIC = b"SRPK"
INDEX_MAGIC = b"SRPX"
TRAILER_MAGIC = b"SRPE"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
HEADER_SIZE = 5
TRAILER_SIZE = 8
CHUNK_ID_SIZE = 32

# Compression codes of a blob. Codes are never reused for another meaning.
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
KNOWN_COMPRESSIONS = frozenset({COMPRESSION_NONE, COMPRESSION_ZSTD})

_ENTRY = struct.Struct("<32sBQII")
_INDEX_HEAD = struct.Struct("<4sBI")
_TRAILER = struct.Struct("<I4s")


class PackFormatError(ValueError):
    """The bytes are not a pack this code can read (magic, version, or structure)."""


@dataclass(frozen=True, slots=True)
class PackEntry:
    """Where one chunk's payload lies inside a pack."""

    chunk_id: bytes
    compression: int
    offset: int
    length: int
    raw_length: int


@dataclass(frozen=True, slots=True)
class BlobToPack:
    chunk_id: bytes
    compression: int
    payload: bytes
    raw_length: int


@dataclass(frozen=True, slots=True)
class EncodedPack:
    pack_id: str
    data: bytes
    entries: tuple[PackEntry, ...]


def encode_pack(blobs: Sequence[BlobToPack]) -> EncodedPack:
    """Build a pack from ``blobs`` (in the given order). Pure CPU: call it off the event loop."""
    parts: list[bytes] = [HEADER_MAGIC, bytes([FORMAT_VERSION])]
    entries: list[PackEntry] = []
    offset = HEADER_SIZE
    for blob in blobs:
        if len(blob.chunk_id) != CHUNK_ID_SIZE:
            raise ValueError("chunk ids are 32 bytes")
        if blob.compression not in KNOWN_COMPRESSIONS:
            raise ValueError(f"unknown compression code {blob.compression}")
        entries.append(PackEntry(blob.chunk_id, blob.compression, offset, len(blob.payload), blob.raw_length))
        parts.append(blob.payload)
        offset += len(blob.payload)
    index = bytearray(_INDEX_HEAD.pack(INDEX_MAGIC, FORMAT_VERSION, len(entries)))
    for entry in entries:
        index += _ENTRY.pack(entry.chunk_id, entry.compression, entry.offset, entry.length, entry.raw_length)
    parts.append(bytes(index))
    parts.append(_TRAILER.pack(len(index), TRAILER_MAGIC))
    data = b"".join(parts)
    return EncodedPack(pack_id=hashlib.sha256(data).hexdigest(), data=data, entries=tuple(entries))


def check_header(data: bytes) -> None:
    """Raise PackFormatError unless ``data`` starts with a pack header of a supported version."""
    if data[:4] != HEADER_MAGIC:
        raise PackFormatError("not a Strongroom pack (bad header magic)")
    if len(data) < HEADER_SIZE or data[4] not in SUPPORTED_VERSIONS:
        version = data[4] if len(data) >= HEADER_SIZE else None
        raise PackFormatError(f"unsupported pack format version {version}")


def decode_index(data: bytes) -> list[PackEntry]:
    """Read the index of a whole pack object; validates every entry's bounds."""
    check_header(data)
    if len(data) < HEADER_SIZE + _INDEX_HEAD.size + TRAILER_SIZE:
        raise PackFormatError("pack too short")
    index_length, trailer_magic = _TRAILER.unpack_from(data, len(data) - TRAILER_SIZE)
    if trailer_magic != TRAILER_MAGIC:
        raise PackFormatError("bad pack trailer magic")
    index_start = len(data) - TRAILER_SIZE - index_length
    if index_start < HEADER_SIZE:
        raise PackFormatError("pack index length out of range")
    magic, version, count = _INDEX_HEAD.unpack_from(data, index_start)
    if magic != INDEX_MAGIC:
        raise PackFormatError("bad pack index magic")
    if version not in SUPPORTED_VERSIONS:
        raise PackFormatError(f"unsupported pack index version {version}")
    if _INDEX_HEAD.size + count * _ENTRY.size != index_length:
        raise PackFormatError("pack index length does not match its entry count")
    entries: list[PackEntry] = []
    position = index_start + _INDEX_HEAD.size
    for _ in range(count):
        chunk_id, compression, offset, length, raw_length = _ENTRY.unpack_from(data, position)
        position += _ENTRY.size
        if compression not in KNOWN_COMPRESSIONS:
            raise PackFormatError(f"unknown compression code {compression}")
        if offset < HEADER_SIZE or offset + length > index_start:
            raise PackFormatError("pack entry out of the blob section")
        entries.append(PackEntry(chunk_id, compression, offset, length, raw_length))
    return entries
