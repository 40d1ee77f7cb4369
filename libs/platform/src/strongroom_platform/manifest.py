"""The point manifest: the complete, sorted list of entries of one backup point.

Written once by the agent gateway when a point is committed, read by the
catalog (to index for browsing) and the gateway (for restores). Byte layout
(docs/formats/manifest.md):

    magic    4 bytes  b"SRMF"
    version  1 byte   1
    body     zstd frame of records, each: uvarint length + FileEntry protobuf

Entries are sorted by path (byte order of UTF-8), directories before their
children, with no duplicate paths. Readers refuse an unknown magic or version.

Version 2 stores the same record stream cut into segments kept as blobs in the
account's packs; the object is the list of its segments (``SegmentRef``,
``encode_segment_list``). Only the gateway reads it (it expands the segments
into the version 1 stream every other reader gets: ``manifest_from_segments``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import zstandard
from strongroom.common.v1 import common_pb2

if TYPE_CHECKING:
    from strongroom_platform.objectstore import ObjectStore

MAGIC = b"SRMF"
VERSION = 1
# Versions whose body is the record stream itself (what ManifestDecoder reads).
SUPPORTED_VERSIONS = frozenset({1})
# Version 2: the record stream stored as segments; the object lists them (docs/formats/manifest.md).
SEGMENTED_VERSION = 2
# Every version a gateway reads from storage (``manifest_version``).
READABLE_VERSIONS = frozenset({1, SEGMENTED_VERSION})
SEGMENT_ID_SIZE = 32


class ManifestFormatError(ValueError):
    """The bytes are not a manifest this code can read (wrong magic, version or corrupt body)."""


def encode_uvarint(value: int) -> bytes:
    """Protobuf-style unsigned LEB128."""
    if 0 <= value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes | bytearray, position: int) -> tuple[int, int]:
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


# Records an encoder collects before it compresses them (one zstd call per piece, not per record).
ENCODE_PIECE = 256 << 10


class ManifestEncoder:
    """Streaming writer: ``add`` entries (or ``add_record`` serialized ones) in path order, collect
    the returned bytes, end with ``finish``.

    Records are compressed a piece (``ENCODE_PIECE`` bytes of records) at a time, so most calls
    return nothing; memory stays bounded by the piece and zstd's window whatever the number of
    entries.
    """

    def __init__(self, *, level: int = 3) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level).compressobj()
        self._previous: bytes | None = None
        self._pending = bytearray(MAGIC + bytes([VERSION]))
        self._compressed_head = False
        self.count = 0

    def add(self, entry: common_pb2.FileEntry) -> bytes:
        return self.add_record(entry.SerializeToString(), entry.path.encode())

    def add_record(self, record: bytes, path: bytes) -> bytes:
        """Add a serialized FileEntry whose path is ``path`` (the caller read it from the record)."""
        if self._previous is not None and path <= self._previous:
            raise ValueError(
                f"manifest entries must be sorted and unique: {path.decode(errors='replace')!r}"
                f" after {self._previous.decode(errors='replace')!r}"
            )
        self._previous = path
        self.count += 1
        pending = self._pending
        pending += encode_uvarint(len(record))
        pending += record
        if len(pending) < ENCODE_PIECE:
            return b""
        return self._flush()

    def _flush(self) -> bytes:
        if not self._compressed_head:  # the head is stored as is, before the frame
            self._compressed_head = True
            head = bytes(self._pending[:5])
            del self._pending[:5]
        else:
            head = b""
        out = head + self._compressor.compress(bytes(self._pending))
        self._pending.clear()
        return out

    def finish(self) -> bytes:
        return self._flush() + self._compressor.flush()


def encode_manifest(entries: Iterable[common_pb2.FileEntry], *, level: int = 3) -> bytes:
    """Serialize entries (already sorted by path) into manifest bytes."""
    encoder = ManifestEncoder(level=level)
    parts = [encoder.add(entry) for entry in entries]
    parts.append(encoder.finish())
    return b"".join(parts)


class ManifestDecoder:
    """Streaming reader: ``feed`` the stored bytes in pieces of any size, get entries back; then ``finish``.

    Holds at most one piece's decompressed output plus one partial record, so a
    manifest of millions of entries is read in bounded memory.
    """

    def __init__(self) -> None:
        self._head = b""
        self._decompressor: Any = None
        self._buffer = bytearray()

    def feed(self, data: bytes | memoryview) -> list[common_pb2.FileEntry]:
        return [common_pb2.FileEntry.FromString(record) for record in self.feed_records(data)]

    def feed_records(self, data: bytes | memoryview) -> list[bytes]:
        """Like ``feed``, but the records unparsed: each a serialized FileEntry (see ``record_path``)."""
        if self._decompressor is None:
            need = 5 - len(self._head)
            self._head += bytes(data[:need])
            data = data[need:]
            if len(self._head) < 5:
                if not MAGIC.startswith(self._head[:4]):
                    raise ManifestFormatError("not a Strongroom manifest (bad magic)")
                return []
            self._check_head()
            self._decompressor = zstandard.ZstdDecompressor().decompressobj()
        if not data:
            return []
        if self._decompressor.eof:
            raise ManifestFormatError("corrupt manifest body: data after the end of the frame")
        try:
            self._buffer += self._decompressor.decompress(bytes(data))
        except zstandard.ZstdError as exc:
            raise ManifestFormatError(f"corrupt manifest body: {exc}") from exc
        if self._decompressor.eof and self._decompressor.unused_data:
            raise ManifestFormatError("corrupt manifest body: data after the end of the frame")
        return self._records()

    def _check_head(self) -> None:
        if self._head[:4] != MAGIC:
            raise ManifestFormatError("not a Strongroom manifest (bad magic)")
        if self._head[4] == SEGMENTED_VERSION:
            raise ManifestFormatError(
                "manifest format version 2 lists segments: read it through the gateway, which expands it"
            )
        if self._head[4] not in SUPPORTED_VERSIONS:
            raise ManifestFormatError(f"unsupported manifest format version {self._head[4]}")

    def _records(self) -> list[bytes]:
        out: list[bytes] = []
        buffer = self._buffer
        position = 0
        while position < len(buffer):
            first = buffer[position]
            if first < 0x80:  # most records: a one-byte length
                length, start = first, position + 1
            else:
                try:
                    length, start = decode_uvarint(buffer, position)
                except ManifestFormatError:
                    if len(buffer) - position >= 10:
                        raise
                    break  # the varint continues in the next piece
            end = start + length
            if end > len(buffer):
                break
            out.append(bytes(buffer[start:end]))
            position = end
        del buffer[:position]
        return out

    def finish(self) -> None:
        """The stored bytes ended: refuse a truncated header, frame or record."""
        if self._decompressor is None:
            if self._head[:4] != MAGIC:
                raise ManifestFormatError("not a Strongroom manifest (bad magic)")
            raise ManifestFormatError("unsupported manifest format version None")
        if not self._decompressor.eof:
            raise ManifestFormatError("corrupt manifest body: the frame is truncated")
        if self._buffer:
            raise ManifestFormatError("truncated manifest record")


DECODE_PIECE = 1 << 20


def under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or below it (every path is below the empty prefix)."""
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def selected(path: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """Whether a restore with these filters restores ``path``: below an include path (every path
    when there is none) and below no exclude path. The gateway applies it to what it sends; the
    console's preview shows what it would send."""
    included = list(include)
    return (not included or any(under(path, p) for p in included)) and not any(under(path, p) for p in exclude)


def record_path(record: bytes) -> bytes | None:
    """The UTF-8 path of a serialized FileEntry read without parsing it, or None when it is not first.

    Entries are serialized in field order, so ``path`` (field 1) leads; a record
    that does not start with it (a writer that orders fields otherwise) gives
    None and must be parsed to learn its path.
    """
    if not record or record[0] != 0x0A:
        return None
    if len(record) > 1 and record[1] < 0x80:  # most paths: a one-byte length
        length, start = record[1], 2
    else:
        try:
            length, start = decode_uvarint(record, 1)
        except ManifestFormatError:
            return None
    end = start + length
    return record[start:end] if end <= len(record) else None


def manifest_records(data: bytes) -> Iterator[bytes]:
    """The serialized entries of manifest bytes, in stored (path) order, unparsed (decompressed piece by piece).

    A reader that stops early leaves the rest undecompressed; one that reads to
    the end gets the checks of ``decode_manifest``.
    """
    decoder = ManifestDecoder()
    view = memoryview(data)
    for offset in range(0, len(view), DECODE_PIECE):
        yield from decoder.feed_records(view[offset : offset + DECODE_PIECE])
    decoder.finish()


def decode_manifest(data: bytes) -> Iterator[common_pb2.FileEntry]:
    """Yield the entries of manifest bytes, in stored (path) order (decompressed piece by piece)."""
    decoder = ManifestDecoder()
    view = memoryview(data)
    for offset in range(0, len(view), DECODE_PIECE):
        yield from decoder.feed(view[offset : offset + DECODE_PIECE])
    decoder.finish()


async def iter_manifest_from_object(
    store: ObjectStore, key: str, *, range_bytes: int = 4 << 20, version_id: str | None = None
) -> AsyncIterator[common_pb2.FileEntry]:
    """Yield the entries of the manifest object ``key`` (that version when given), reading it in ranges.

    Decompression and parsing run in a worker thread. Raises ``ObjectNotFound``
    or ``ManifestFormatError`` like reading the whole object would.
    """
    size = (await store.stat(key, version_id=version_id)).size
    decoder = ManifestDecoder()
    offset = 0
    while offset < size:
        piece = await store.get(key, offset=offset, length=min(range_bytes, size - offset), version_id=version_id)
        if not piece:
            break
        offset += len(piece)
        for entry in await asyncio.to_thread(decoder.feed, piece):
            yield entry
    decoder.finish()


def manifest_version(data: bytes) -> int:
    """The format version of stored manifest bytes (1 or 2); ManifestFormatError for anything else."""
    if data[:4] != MAGIC:
        raise ManifestFormatError("not a Strongroom manifest (bad magic)")
    version = data[4] if len(data) > 4 else None
    if version not in READABLE_VERSIONS:
        raise ManifestFormatError(
            f"unsupported manifest format version {version} (this gateway reads 1 and 2; upgrade it to read newer"
            " manifests)"
        )
    assert version is not None
    return version


class SegmentRef(NamedTuple):
    """One segment of a version 2 manifest: the blob ``segment_id`` holds ``entry_count`` records,
    ``byte_length`` bytes of the version 1 record stream, the first of them with path ``first_path``."""

    segment_id: bytes
    entry_count: int
    byte_length: int
    first_path: bytes


def encode_segment_list(refs: Iterable[SegmentRef], *, level: int = 3) -> bytes:
    """The version 2 manifest object listing ``refs`` in stream order (docs/formats/manifest.md)."""
    body = bytearray()
    for ref in refs:
        if len(ref.segment_id) != SEGMENT_ID_SIZE:
            raise ValueError(f"a segment id is {SEGMENT_ID_SIZE} bytes, got {len(ref.segment_id)}")
        if ref.entry_count < 1 or ref.byte_length < 1:
            raise ValueError("a segment holds at least one record")
        body += ref.segment_id
        body += encode_uvarint(ref.entry_count)
        body += encode_uvarint(ref.byte_length)
        body += encode_uvarint(len(ref.first_path))
        body += ref.first_path
    return MAGIC + bytes([SEGMENTED_VERSION]) + zstandard.ZstdCompressor(level=level).compress(bytes(body))


def decode_segment_list(data: bytes) -> list[SegmentRef]:
    """The segments listed by a version 2 manifest object, in stream order; ManifestFormatError when corrupt."""
    if manifest_version(data) != SEGMENTED_VERSION:
        raise ManifestFormatError(f"manifest format version {data[4]} does not list segments")
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    try:
        body = decompressor.decompress(data[5:])
    except zstandard.ZstdError as exc:
        raise ManifestFormatError(f"corrupt segment list: {exc}") from exc
    if not decompressor.eof or decompressor.unused_data:
        raise ManifestFormatError("corrupt segment list: the frame is truncated or followed by other bytes")
    refs: list[SegmentRef] = []
    position = 0
    while position < len(body):
        if position + SEGMENT_ID_SIZE > len(body):
            raise ManifestFormatError("corrupt segment list: truncated segment id")
        segment_id = bytes(body[position : position + SEGMENT_ID_SIZE])
        count, position = decode_uvarint(body, position + SEGMENT_ID_SIZE)
        length, position = decode_uvarint(body, position)
        path_length, position = decode_uvarint(body, position)
        first_path = bytes(body[position : position + path_length])
        position += path_length
        if position > len(body):
            raise ManifestFormatError("corrupt segment list: truncated first path")
        if count < 1 or length < 1:
            raise ManifestFormatError("corrupt segment list: an empty segment")
        if refs and first_path <= refs[-1].first_path:
            raise ManifestFormatError("corrupt segment list: segments out of path order")
        refs.append(SegmentRef(segment_id, count, length, first_path))
    return refs


def segment_records(ref: SegmentRef, content: bytes) -> list[bytes]:
    """The records of one segment's blob content, checked against its list entry (count, length, first path)."""
    if len(content) != ref.byte_length:
        raise ManifestFormatError(
            f"segment {ref.segment_id.hex()} holds {len(content)} bytes, the manifest lists {ref.byte_length}"
        )
    records: list[bytes] = []
    position = 0
    while position < len(content):
        length, start = decode_uvarint(content, position)
        position = start + length
        if position > len(content):
            raise ManifestFormatError(f"segment {ref.segment_id.hex()}: a record runs past its end")
        records.append(content[start:position])
    if len(records) != ref.entry_count:
        raise ManifestFormatError(
            f"segment {ref.segment_id.hex()} holds {len(records)} records, the manifest lists {ref.entry_count}"
        )
    first = record_path(records[0])
    if first is None:
        first = common_pb2.FileEntry.FromString(records[0]).path.encode()
    if first != ref.first_path:
        raise ManifestFormatError(f"segment {ref.segment_id.hex()} does not start at the path the manifest lists")
    return records


def manifest_from_segments(refs: Iterable[SegmentRef], contents: Iterable[bytes], *, level: int = 1) -> bytes:
    """The version 1 manifest (the record stream every reader knows) of a version 2 one whose segments' blob
    contents are ``contents`` (in the order of ``refs``). Checks every segment against its list entry and
    the stream's path order at every segment boundary. Pure CPU."""
    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    out = [MAGIC + bytes([VERSION])]
    previous_last: bytes | None = None
    for ref, content in zip(refs, contents, strict=True):
        records = segment_records(ref, content)
        if previous_last is not None and ref.first_path <= previous_last:
            raise ManifestFormatError(f"segment {ref.segment_id.hex()} is out of path order")
        last = record_path(records[-1])
        previous_last = last if last is not None else common_pb2.FileEntry.FromString(records[-1]).path.encode()
        out.append(compressor.compress(content))
    out.append(compressor.flush())
    return b"".join(out)
