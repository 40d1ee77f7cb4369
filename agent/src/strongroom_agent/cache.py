"""The local cache of the last committed point of each backup root (forever incremental).

One file per backup root, ``<state-dir>/cache/<sha256(mount point)[:32]>.cache``:
the entries of the last point the gateway confirmed (``CommitPoint``), each with
the ``lstat`` identity the agent saw when it read the file. A file whose
``(dev, inode, size, mtime_ns, ctime_ns)`` is unchanged is not read again; its
chunk ids come from here. The file is sorted by path bytes, exactly like the
scan, so a backup walks it in step with the scan (``CacheCursor``) and memory
stays bounded whatever the number of files (ADR 0014).

Layout, version 1 (integers little-endian)::

    header   magic b"SRAC" | version u8 = 1 | fingerprint (16 bytes) | u16 n | mount point (n bytes, UTF-8)
    records  u32 length (> 0) | record, in strictly increasing path-byte order
               record: u8 flags (bit 0: trusted) | dev u64 | ino u64 | size u64 | mtime_ns i64 | ctime_ns i64
                       | u16 n | path (n bytes) | serialized strongroom.common.v1.FileEntry
    end      u32 0
    footer   point id (n bytes, ASCII) | u8 n | record count u64 | BLAKE3 (32 bytes) of every preceding byte

The fingerprint binds the cache to the repository (chunk-id key and chunker
parameters): chunk ids computed for another account are never reused. A cache
that is missing, truncated, fails its checksum, has another version, fingerprint
or mount point is ignored (the backup reads every file) and replaced after the
next commit. A file whose ctime is not safely older than the scan start is
stored untrusted (racy: it may change again within the timestamp granularity)
and read again next time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import struct
from collections import deque
from dataclasses import dataclass
from typing import IO

import blake3
from strongroom.common.v1 import common_pb2

from strongroom_agent.chunking import ChunkParams

log = logging.getLogger(__name__)

MAGIC = b"SRAC"
VERSION = 1
CACHE_DIR = "cache"
_STAT = struct.Struct("<BQQQqqH")  # flags, dev, ino, size, mtime_ns, ctime_ns, path length
_U32 = struct.Struct("<I")
_FOOTER = struct.Struct("<BQ32s")  # point id length, record count, checksum
_TRUSTED = 1
_BUFFER = 1 << 20
_READ_AHEAD = 2000

StatKey = tuple[int, int, int, int, int]  # dev, ino, size, mtime_ns, ctime_ns


class CacheCorrupt(Exception):
    """The cache file cannot be used (its content is ignored, never trusted)."""


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def fingerprint(params: ChunkParams) -> bytes:
    """16 bytes identifying the repository parameters without revealing the key."""
    material = struct.pack("<4sIIII", b"SRAC", params.min_size, params.avg_size, params.max_size, params.seed)
    return blake3.blake3(material, key=params.key).digest()[:16]


def cache_path(state_dir: str, mount_point: str) -> str:
    name = hashlib.sha256(mount_point.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(state_dir, CACHE_DIR, f"{name}.cache")


def _path_field(path: bytes) -> bytes:
    """``path`` as field 1 of a serialized FileEntry (tag, varint length, bytes)."""
    n = len(path)
    head = bytearray([0x0A])
    while n >= 0x80:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + path


def _leading_type(data: bytes, body: int, path: bytes) -> int | None:
    """The type of the FileEntry at ``data[body:]`` if it leads with ``path`` as the runtime writes it, else None.

    The protobuf runtime writes fields in number order: ``path`` (field 1; the
    point root's empty path is left out), then ``type`` (field 2; absent when
    0). Comparing the record's own path with those leading bytes checks the
    record's consistency without parsing the entry; a record where they do not
    match (or a type of two or more varint bytes) is parsed instead.
    """
    lead = _path_field(path) if len(path) >= 0x80 else b"\x0a" + bytes((len(path),)) + path
    if not path or not data.startswith(lead, body):
        return None
    end = body + len(lead)
    if end + 1 < len(data) and data[end] == 0x10:
        kind = data[end + 1]
        return kind if not kind & 0x80 else None
    if end < len(data) and data[end] == 0x10:
        return None
    return 0


class CacheRecord:
    """One cached entry: its path, stat identity and trust, the record as stored, the FileEntry parsed when used.

    A no-change backup only compares the stat identity and copies ``raw``:
    parsing every record's FileEntry up front was about a third of the agent's
    CPU for such a backup.
    """

    __slots__ = ("path", "key", "trusted", "raw", "_body", "_kind", "_entry")

    def __init__(self, path: bytes, key: StatKey, trusted: bool, raw: bytes, body: int, kind: int) -> None:
        self.path = path
        self.key = key
        self.trusted = trusted
        self.raw = raw  # the record as stored (without its length), copied as-is for an unchanged file
        self._body = body  # where the serialized FileEntry starts in ``raw``
        self._kind = kind  # the entry's type
        self._entry: common_pb2.FileEntry | None = None

    @property
    def entry(self) -> common_pb2.FileEntry:
        if self._entry is None:
            self._entry = common_pb2.FileEntry.FromString(self.raw[self._body :])
        return self._entry

    def unchanged(self, st: os.stat_result) -> bool:
        """The file may be taken from the cache without reading it."""
        return self.trusted and self.key == stat_key(st) and self._kind == common_pb2.ENTRY_TYPE_FILE

    def same_entry(self, body: bytes, entry: common_pb2.FileEntry) -> bool:
        """The cached FileEntry equals ``entry`` (serialized as ``body``): equal bytes, else compared parsed."""
        raw = self.raw
        start = self._body
        if len(raw) - start == len(body) and raw[start:] == body:
            return True
        return self.entry == entry


def encode_record(path: bytes, body: bytes, st: os.stat_result, racy_before_ns: int) -> bytes:
    """One length-prefixed cache record of the serialized FileEntry ``body`` made from ``st``.

    Trusted unless racy: changed so recently (ctime not before ``racy_before_ns``)
    that another change may keep the same timestamps.
    """
    trusted = st.st_ctime_ns < racy_before_ns
    key = _STAT.pack(
        _TRUSTED if trusted else 0, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, len(path)
    )
    return _U32.pack(len(key) + len(path) + len(body)) + key + path + body


def encode_unchanged(record: CacheRecord) -> bytes:
    """The length-prefixed stored record of a file found unchanged, as ``CacheWriter.add_unchanged`` writes it."""
    return _U32.pack(len(record.raw)) + record.raw


def _header(fp: bytes, mount_point: str) -> bytes:
    mount = mount_point.encode("utf-8", "surrogateescape")
    return MAGIC + bytes([VERSION]) + fp + struct.pack("<H", len(mount)) + mount


# --- reading --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheInfo:
    path: str
    point_id: str
    count: int
    body_offset: int  # first record
    end_offset: int  # the end marker


def validate(path: str, fp: bytes, mount_point: str) -> CacheInfo:
    """Check the whole file (checksum, header, footer) before any of it is used; raises CacheCorrupt."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = _header(fp, mount_point)
            if size < len(header) + 4 + _FOOTER.size:
                raise CacheCorrupt("too short")
            hasher = blake3.blake3()
            remaining = size - 32
            first = b""
            while remaining:
                block = f.read(min(_BUFFER, remaining))
                if not block:
                    raise CacheCorrupt("shorter than its size")
                if not first:
                    first = block[: len(header)]
                hasher.update(block)
                remaining -= len(block)
            f.seek(size - _FOOTER.size)
            id_length, count, checksum = _FOOTER.unpack(f.read(_FOOTER.size))
            if hasher.digest() != checksum:
                raise CacheCorrupt("checksum mismatch")
            if first[:5] != MAGIC + bytes([VERSION]):
                raise CacheCorrupt("unknown magic or version")
            if first != header:
                raise CacheCorrupt("written for another repository or mount point")
            id_offset = size - _FOOTER.size - id_length
            f.seek(id_offset - 4)
            if f.read(4) != _U32.pack(0):
                raise CacheCorrupt("no end marker")
            point_id = f.read(id_length).decode("ascii")
    except (OSError, UnicodeDecodeError, struct.error) as exc:
        raise CacheCorrupt(str(exc)) from exc
    if not point_id:
        raise CacheCorrupt("no point id")
    return CacheInfo(path, point_id, count, len(header), id_offset - 4)


def load(state_dir: str, params: ChunkParams, mount_point: str) -> CacheInfo | None:
    """The valid cache of this root, or None (missing or unusable: logged, never an error)."""
    path = cache_path(state_dir, mount_point)
    if not os.path.exists(path):
        return None
    try:
        return validate(path, fingerprint(params), mount_point)
    except CacheCorrupt as exc:
        log.warning("ignoring the backup cache %s of %s: %s", path, mount_point, exc)
        return None


class CacheCursor:
    """Walks a validated cache in path order, in step with the scan (bounded read-ahead).

    Synchronous: the scan's worker thread (``compare.TreeCompare``) owns it and
    parses a block of records whenever the one at hand is used up. If the records
    turn out malformed after all (e.g. the disk changed the file after
    validation), ``broken`` is set and the cursor behaves as if the cache ended
    there; the caller then commits a full manifest.
    """

    def __init__(self, info: CacheInfo) -> None:
        self.info = info
        self.broken = False
        self.records_read = 0
        self._file: IO[bytes] | None = open(info.path, "rb", buffering=_BUFFER)  # noqa: SIM115 - closed in close()
        self._file.seek(info.body_offset)
        self._ahead: deque[CacheRecord] = deque()
        self._done = False
        self._last = b""
        self._parsed = 0  # records parsed so far

    def _read_some(self) -> list[CacheRecord]:
        out: list[CacheRecord] = []
        f = self._file
        if f is None:
            return out
        try:
            while len(out) < _READ_AHEAD:
                (length,) = _U32.unpack(f.read(4))
                if length == 0:
                    self._done = True
                    if self._parsed + len(out) != self.info.count:
                        raise CacheCorrupt("record count mismatch")
                    break
                data = f.read(length)
                flags, dev, ino, size, mtime, ctime, path_length = _STAT.unpack_from(data)
                body = _STAT.size + path_length
                path = data[_STAT.size : body]
                kind = _leading_type(data, body, path)
                if kind is None:  # parsed to learn its path and type
                    entry = common_pb2.FileEntry.FromString(data[body:])
                    if entry.path.encode() != path:
                        raise CacheCorrupt(f"record {path!r} inconsistent")
                    kind = entry.type
                if self._parsed + len(out) > 0 and path <= self._last:
                    raise CacheCorrupt(f"record {path!r} out of order")
                self._last = path
                key = (dev, ino, size, mtime, ctime)
                out.append(CacheRecord(path, key, bool(flags & _TRUSTED), data, body, kind))
        except Exception as exc:  # any malformed byte: stop trusting the rest
            log.warning("backup cache %s unusable after %d records: %s", self.info.path, self._parsed + len(out), exc)
            self.broken = True
            self._done = True
        self._parsed += len(out)
        return out

    def peek(self) -> CacheRecord | None:
        """The next record (smallest path not taken yet), or None at the end."""
        ahead = self._ahead
        if not ahead:
            if self._done:
                return None
            ahead.extend(self._read_some())
            if not ahead:
                return None
        return ahead[0]

    def take(self) -> CacheRecord:
        """Consume the record ``peek`` returned."""
        self.records_read += 1
        return self._ahead.popleft()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- writing --------------------------------------------------------------------------------------------------------


class CacheWriter:
    """Writes the cache of the point being backed up to a temporary file; ``commit`` puts it in place.

    ``commit`` is called only once the gateway has confirmed the point, so the
    cache never describes a point the gateway does not hold.
    """

    def __init__(self, state_dir: str, params: ChunkParams, mount_point: str, *, racy_before_ns: int) -> None:
        self.path = cache_path(state_dir, mount_point)
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        prefix = os.path.basename(self.path)
        for name in os.listdir(directory):  # temporaries of a run that crashed
            if name.startswith(prefix + ".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))
        self._temp = f"{self.path}.{secrets.token_hex(4)}.tmp"
        fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._file: IO[bytes] | None = os.fdopen(fd, "wb", buffering=_BUFFER)
        self._hasher = blake3.blake3()
        self.racy_before_ns = racy_before_ns
        self._last: bytes | None = None
        self.count = 0
        self._write(_header(fingerprint(params), mount_point))

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._hasher.update(data)

    def add(self, entry: common_pb2.FileEntry, st: os.stat_result) -> None:
        """Record ``entry`` (in path order) with the stat it was made from."""
        path = entry.path.encode()
        if self._last is not None and path <= self._last:
            raise ValueError(f"cache entries must be sorted: {entry.path!r}")
        self._last = path
        self._write(encode_record(path, entry.SerializeToString(), st, self.racy_before_ns))
        self.count += 1

    def add_records(self, records: bytes, count: int, first: bytes, last: bytes) -> None:
        """Append ``count`` sorted records (``encode_record``/``encode_unchanged``), paths ``first`` to ``last``."""
        if self._last is not None and first <= self._last:
            raise ValueError(f"cache entries must be sorted: {first!r}")
        self._last = last
        self._write(records)
        self.count += count

    def add_unchanged(self, record: CacheRecord) -> None:
        """Record a file found unchanged (``record.unchanged`` held): its stored record is copied as-is.

        It stays trusted: its ctime is older still than when it was first recorded.
        """
        if self._last is not None and record.path <= self._last:
            raise ValueError(f"cache entries must be sorted: {record.path!r}")
        if not record.raw:
            raise ValueError("only records read from a cache can be copied")
        self._last = record.path
        self._write(encode_unchanged(record))
        self.count += 1

    def commit(self, point_id: str) -> None:
        """Seal with the confirmed point id, fsync and atomically replace the previous cache."""
        ident = point_id.encode("ascii")
        self._write(_U32.pack(0) + ident)
        head = struct.pack("<BQ", len(ident), self.count)
        self._write(head)
        assert self._file is not None
        self._file.write(self._hasher.digest())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._temp, self.path)
        dir_fd = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def entries(self) -> CacheEntries:
        """Re-read the entries written so far (for a full-manifest commit), in order."""
        assert self._file is not None
        self._file.flush()
        return CacheEntries(self._temp)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            with contextlib.suppress(OSError):
                os.unlink(self._temp)


class CacheEntries:
    """Sequential batches of the FileEntries of an unsealed cache file."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "rb", buffering=_BUFFER)  # noqa: SIM115 - closed in close()
        magic = self._file.read(5 + 16)
        (mount_length,) = struct.unpack("<H", self._file.read(2))
        self._file.read(mount_length)
        assert magic[:4] == MAGIC

    def read_batch(self, max_entries: int, max_bytes: int) -> list[common_pb2.FileEntry]:
        batch: list[common_pb2.FileEntry] = []
        total = 0
        while len(batch) < max_entries and total < max_bytes:
            raw = self._file.read(4)
            if len(raw) < 4:
                break
            (length,) = _U32.unpack(raw)
            if length == 0:
                break
            data = self._file.read(length)
            (path_length,) = struct.unpack_from("<H", data, _STAT.size - 2)
            entry = common_pb2.FileEntry()
            entry.ParseFromString(data[_STAT.size + path_length :])
            batch.append(entry)
            total += length
        return batch

    def close(self) -> None:
        self._file.close()
