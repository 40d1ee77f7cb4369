"""The point manifest: the complete, sorted list of entries of one backup point.

Written once by the agent gateway when a point is committed, read by the
catalog (to index for browsing) and the gateway (for restores). Byte layout
(docs/formats/manifest.md):

    magic    4 bytes  b"SRMF"
    version  1 byte   1
    body     zstd frame of records, each: uvarint length + FileEntry protobuf

Entries are sorted by path (byte order of UTF-8), directories before their
children, with no duplicate paths. Readers refuse an unknown magic or version.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import zstandard
from strongroom.common.v1 import common_pb2

MAGIC = b"SRMF"
VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})


class ManifestFormatError(ValueError):
    """The bytes are not a manifest this code can read (wrong magic, version or corrupt body)."""


def encode_uvarint(value: int) -> bytes:
    """Protobuf-style unsigned LEB128."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes, position: int) -> tuple[int, int]:
    """Read a uvarint at ``position``; return (value, next position)."""
    result = 0
    shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ManifestFormatError("truncated or overlong varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def encode_manifest(entries: Iterable[common_pb2.FileEntry], *, level: int = 3) -> bytes:
    """Serialize entries (already sorted by path) into manifest bytes."""
    parts: list[bytes] = []
    previous: str | None = None
    for entry in entries:
        if previous is not None and entry.path.encode() <= previous.encode():
            raise ValueError(f"manifest entries must be sorted and unique: {entry.path!r} after {previous!r}")
        previous = entry.path
        payload = entry.SerializeToString()
        parts.append(encode_uvarint(len(payload)))
        parts.append(payload)
    body = zstandard.ZstdCompressor(level=level).compress(b"".join(parts))
    return MAGIC + bytes([VERSION]) + body


def decode_manifest(data: bytes) -> Iterator[common_pb2.FileEntry]:
    """Yield the entries of manifest bytes, in stored (path) order."""
    if data[:4] != MAGIC:
        raise ManifestFormatError("not a Strongroom manifest (bad magic)")
    if len(data) < 5 or data[4] not in SUPPORTED_VERSIONS:
        version = data[4] if len(data) > 4 else None
        raise ManifestFormatError(f"unsupported manifest format version {version}")
    try:
        body = zstandard.ZstdDecompressor().decompressobj().decompress(data[5:])
    except zstandard.ZstdError as exc:
        raise ManifestFormatError(f"corrupt manifest body: {exc}") from exc
    position = 0
    while position < len(body):
        length, position = decode_uvarint(body, position)
        end = position + length
        if end > len(body):
            raise ManifestFormatError("truncated manifest record")
        entry = common_pb2.FileEntry()
        entry.ParseFromString(body[position:end])
        position = end
        yield entry
