"""Indexing a point for browse and search as the delta from its base point (ADR 0049).

A point's base is the newest point of its lineage (ADR 0043: one filesystem of one instance). When
the base is live and was indexed this way, the two manifests are compared record by record as they
stream in from the gateway: a record whose stored bytes equal the base's is unchanged and is never
decoded, so a day with few changes costs one pass over two byte streams and writes only what
changed. Otherwise (first point, base expired or indexed before, base manifest unreadable) the
point is a baseline: every entry is written, and the point starts a new run of deltas (``floor``).

Memory is bounded by the pieces in flight (the gateway sends at most 1 MiB per piece; a piece is
decompressed when it arrives), never by the size of the point.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import zstandard
from strongroom.common.v1 import common_pb2
from strongroom_platform.manifest import MAGIC, SUPPORTED_VERSIONS, ManifestDecoder, ManifestFormatError
from strongroom_platform.objectstore import ObjectNotFound

from strongroom_catalog.model import REMOVED, SearchChange, TreeChange, TreePlace
from strongroom_catalog.ports import CatalogTx
from strongroom_catalog.search import DeltaIndexer, SearchSource

log = logging.getLogger(__name__)

_INT64_MAX = (1 << 63) - 1
_INT32_MAX = (1 << 31) - 1
_COMPACT = 4 << 20  # drop consumed bytes of a stream's buffer past this offset
_SPAN = 16  # records compared at once on the fast path


class BaseUnreadable(Exception):
    """The base point's manifest could not be read: index the point as a baseline instead."""


def check_entry(entry: common_pb2.FileEntry) -> None:
    """Refuse an entry the index cannot hold (ManifestFormatError): bad path segments, out-of-range numbers."""
    path = entry.path
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        raise ManifestFormatError(f"invalid entry path {path!r}")
    if entry.size > _INT64_MAX or entry.mode > _INT32_MAX:
        # The index stores signed 64/32-bit integers; such an entry can only be corrupt.
        raise ManifestFormatError(f"entry {path!r} has an out-of-range size or mode")


def tree_change(lineage_id: int, seq: int, entry: common_pb2.FileEntry) -> TreeChange:
    parent, _, name = entry.path.rpartition("/")
    return TreeChange(
        lineage_id=lineage_id,
        seq=seq,
        parent=parent,
        name=name,
        type=entry.type,
        mode=entry.mode,
        uid=entry.uid,
        gid=entry.gid,
        size=entry.size,
        mtime_ns=entry.mtime_ns,
        link_target=entry.link_target,
    )


def _browse_key(e: common_pb2.FileEntry) -> tuple[int, int, int, int, int, int, str]:
    return (e.type, e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.link_target)


@dataclass
class Delta:
    """The rows one point adds: browse changes and search changes."""

    lineage_id: int
    seq: int
    tree: list[TreeChange] = field(default_factory=list)
    search: list[SearchChange] = field(default_factory=list)

    def added(self, entry: common_pb2.FileEntry) -> None:
        self.tree.append(tree_change(self.lineage_id, self.seq, entry))
        self.search.append(SearchChange(self.lineage_id, entry.path, self.seq, entry.type, entry.size, entry.mtime_ns))

    def changed(self, entry: common_pb2.FileEntry, base: common_pb2.FileEntry) -> None:
        if _browse_key(entry) != _browse_key(base):
            self.tree.append(tree_change(self.lineage_id, self.seq, entry))
        # search sees type, size and mtime (ADR 0043)
        if (entry.type, entry.size, entry.mtime_ns) != (base.type, base.size, base.mtime_ns):
            self.search.append(
                SearchChange(self.lineage_id, entry.path, self.seq, entry.type, entry.size, entry.mtime_ns)
            )

    def removed(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        self.tree.append(TreeChange(self.lineage_id, self.seq, parent, name, REMOVED, 0, 0, 0, 0, 0, ""))
        self.search.append(SearchChange(self.lineage_id, path, self.seq, REMOVED, 0, 0))


class RecordStream:
    """The records of one manifest as raw bytes, decompressed piece by piece into ``buf``.

    ``pos`` is the offset of the first record not consumed yet; ``done`` is set once the stored
    bytes ended (the frame and the last record were checked complete).
    """

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces
        self._head = b""
        self._decompressor: Any = None
        self.buf = bytearray()
        self.pos = 0
        self.done = False

    async def fill(self) -> None:
        """Append the next piece's records (or set ``done``); refuses a corrupt or truncated manifest."""
        if self.done:
            raise ManifestFormatError("truncated manifest record")
        piece = await anext(self._pieces, None)
        if piece is None:
            self._finish()
            return
        await asyncio.to_thread(self._feed, piece)

    def _feed(self, data: bytes) -> None:
        if self.pos > _COMPACT:
            del self.buf[: self.pos]
            self.pos = 0
        if self._decompressor is None:
            need = 5 - len(self._head)
            self._head += data[:need]
            data = data[need:]
            if self._head[:4] != MAGIC[: len(self._head[:4])]:
                raise ManifestFormatError("not a Strongroom manifest (bad magic)")
            if len(self._head) < 5:
                return
            if self._head[4] not in SUPPORTED_VERSIONS:
                raise ManifestFormatError(f"unsupported manifest format version {self._head[4]}")
            self._decompressor = zstandard.ZstdDecompressor().decompressobj()
        if not data:
            return
        if self._decompressor.eof:
            raise ManifestFormatError("corrupt manifest body: data after the end of the frame")
        try:
            self.buf += self._decompressor.decompress(data)
        except zstandard.ZstdError as exc:
            raise ManifestFormatError(f"corrupt manifest body: {exc}") from exc
        if self._decompressor.eof and self._decompressor.unused_data:
            raise ManifestFormatError("corrupt manifest body: data after the end of the frame")

    def _finish(self) -> None:
        if self._decompressor is None:
            raise ManifestFormatError("truncated manifest: no header")
        if not self._decompressor.eof:
            raise ManifestFormatError("corrupt manifest body: the frame is truncated")
        self.done = True

    def at_end(self) -> bool:
        return self.done and self.pos >= len(self.buf)


def _record_end(buf: bytearray, pos: int) -> int:
    """The end of the record at ``pos`` (length prefix included), or -1 when it is not all in ``buf``."""
    n = len(buf)
    length = 0
    shift = 0
    while pos < n:
        byte = buf[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            end = pos + length
            return end if end <= n else -1
        shift += 7
        if shift > 63:
            raise ManifestFormatError("corrupt manifest record: overlong length")
    return -1


def _span_end(buf: bytearray, pos: int) -> tuple[int, int]:
    """The end of up to ``_SPAN`` whole records from ``pos``, and how many there are."""
    n = len(buf)
    count = 0
    while count < _SPAN and pos < n:
        length = buf[pos]
        end = pos + 1 + length if length < 0x80 else _record_end(buf, pos)
        if end < 0 or end > n:
            break
        pos = end
        count += 1
    return pos, count


def _parse(buf: bytearray, start: int, end: int) -> common_pb2.FileEntry:
    """The entry of the record ``buf[start:end]`` (its length prefix included)."""
    pos = start
    while buf[pos] >= 0x80:
        pos += 1
    entry = common_pb2.FileEntry()
    try:
        entry.ParseFromString(bytes(buf[pos + 1 : end]))
    except Exception as exc:  # protobuf's DecodeError and the like: the record is corrupt
        raise ManifestFormatError(f"corrupt manifest record: {exc}") from exc
    return entry


class RecordDiff:
    """Compares a new manifest with its base's, record by record, both in path order (UTF-8 bytes).

    ``step`` consumes records while both streams have whole records in hand (or have ended) and
    reports which stream needs more bytes. Runs of unchanged records cost a slice comparison each;
    only differing records are decoded. ``records`` counts the new manifest's records.
    """

    def __init__(self, base: RecordStream, new: RecordStream, delta: Delta) -> None:
        self.base = base
        self.new = new
        self.delta = delta
        self._last: bytes | None = None  # the last path decoded from the new manifest (ordering contract)
        self.records = 0

    def _merge(self, entry: common_pb2.FileEntry | None, old: common_pb2.FileEntry | None) -> tuple[bool, bool]:
        """Account for a pair of differing records (either side may have ended); returns which
        of (base, new) it consumed."""
        if entry is None or (old is not None and old.path.encode() < entry.path.encode()):
            assert old is not None
            if old.path:
                self.delta.removed(old.path)
            return True, False
        path = entry.path.encode()
        if self._last is not None and path <= self._last:
            raise ManifestFormatError(f"entries not sorted or duplicated at {entry.path!r}")
        self._last = path
        if path:  # the point's root directory itself is not listed
            check_entry(entry)
            if old is not None and entry.path == old.path:
                self.delta.changed(entry, old)
            else:
                self.delta.added(entry)
        return old is not None and entry.path == old.path, True

    def step(self) -> RecordStream | None:
        """Advance; returns the stream to fill before the next step, None when both ended."""
        base, new = self.base, self.new
        bb, nb = base.buf, new.buf
        bp, np_ = base.pos, new.pos
        records = 0
        try:
            while True:
                # the fast path: a span of whole records of the new manifest whose bytes (length
                # prefixes included) equal the base's at the same place: the same records
                end, count = _span_end(nb, np_)
                if count and bb[bp : bp + end - np_] == nb[np_:end]:
                    bp += end - np_
                    np_ = end
                    records += count
                    continue
                # record by record through this span (a record differs, or none is whole yet)
                for _ in range(max(count, 1)):
                    ne = _record_end(nb, np_) if np_ < len(nb) else -1
                    if ne >= 0 and bb[bp : bp + ne - np_] == nb[np_:ne]:
                        bp += ne - np_
                        np_ = ne
                        records += 1
                        continue
                    be = _record_end(bb, bp) if bp < len(bb) else -1
                    if ne < 0 and not new.done:
                        return new
                    if be < 0 and not base.done:
                        return base
                    if ne < 0 and np_ < len(nb):
                        raise ManifestFormatError("truncated manifest record")
                    if be < 0 and bp < len(bb):
                        raise BaseUnreadable("truncated manifest record in the base point's manifest")
                    if ne < 0 and be < 0:
                        return None
                    take_base, take_new = self._merge(
                        _parse(nb, np_, ne) if ne >= 0 else None, _parse(bb, bp, be) if be >= 0 else None
                    )
                    if take_base:
                        bp = be
                    if take_new:
                        np_ = ne
                        records += 1
        finally:
            base.pos, new.pos = bp, np_
            self.records += records


async def diff_points(
    base: AsyncIterator[bytes], new: AsyncIterator[bytes], delta: Delta, flush: Callable[[Delta], Awaitable[None]]
) -> int:
    """Run the comparison of the two manifests to the end, awaiting ``flush(delta)`` whenever it
    holds rows to write; returns the number of records of the new manifest. A failure to read the
    base's manifest is raised as BaseUnreadable, the new manifest's own errors as they are."""
    base_stream, new_stream = RecordStream(base), RecordStream(new)
    diff = RecordDiff(base_stream, new_stream, delta)
    while True:
        wanted = await asyncio.to_thread(diff.step)
        if delta.tree or delta.search:
            await flush(delta)
        if wanted is None:
            return diff.records
        if wanted is base_stream:
            try:
                await base_stream.fill()
            except (ManifestFormatError, ObjectNotFound) as exc:
                raise BaseUnreadable(str(exc)) from exc
        else:
            await new_stream.fill()


class EntryBatches:
    """Entries of a whole manifest in batches, decoded piece by piece (a baseline)."""

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces
        self._decoder = ManifestDecoder()
        self._previous: bytes | None = None
        self.count = 0

    def _check(self, entries: list[common_pb2.FileEntry]) -> list[common_pb2.FileEntry]:
        out = []
        for entry in entries:
            encoded = entry.path.encode()
            if self._previous is not None and encoded <= self._previous:
                raise ManifestFormatError(f"entries not sorted or duplicated at {entry.path!r}")
            self._previous = encoded
            if not encoded:  # the point's root directory itself: nothing to list it in
                continue
            check_entry(entry)
            out.append(entry)
        self.count += len(out)
        return out

    def _decode(self, piece: bytes) -> list[common_pb2.FileEntry]:
        return self._check(self._decoder.feed(piece))

    async def __aiter__(self) -> AsyncIterator[list[common_pb2.FileEntry]]:
        async for piece in self._pieces:
            entries = await asyncio.to_thread(self._decode, piece)
            if entries:
                yield entries
        self._decoder.finish()


async def index_baseline(
    tx: CatalogTx,
    pieces: AsyncIterator[bytes],
    place: TreePlace,
    search: SearchSource | None,
    *,
    batch_size: int,
) -> tuple[int, int, int]:
    """Write every entry of the point as a browse row, and its search delta (``search``: the state
    it is a delta from; None: a point already in the search index). Returns (entries, browse rows,
    search rows)."""
    indexer = None if search is None else DeltaIndexer(tx, place.lineage_id, place.seq, search)
    batches = EntryBatches(pieces)
    rows = 0
    async for entries in batches:
        for start in range(0, len(entries), batch_size):
            part = entries[start : start + batch_size]
            await tx.add_tree_changes([tree_change(place.lineage_id, place.seq, e) for e in part])
            rows += len(part)
            if indexer is not None:
                await indexer.feed(part)
    changes = 0 if indexer is None else await indexer.finish()
    return batches.count, rows, changes
