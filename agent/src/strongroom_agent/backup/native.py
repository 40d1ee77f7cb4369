"""The native small-file read path: one GIL-free call per group of one-chunk files (ADR 0080).

``strongroom_agent._native`` (``native/`` in the repository, built by
``make native`` where cargo is installed; never packaged) reads, hashes and
compresses a group of files of at most the chunker's minimum size, each of
which is one chunk, with the GIL released for the whole group. It opens like
``read.open_for_backup``, applies ``FileReader``'s consistency rule (one more
attempt when the inode, size, mtime or ctime moved; a short or long read is a
change) and returns per file what the Python path would have found: the
``fstat`` it was read under, the chunk's keyed BLAKE3 id and its content
compressed as ``chunking.compress`` does (zstd at ``ZSTD_LEVEL``, or the
content itself when that is not smaller), or why the file is left out. Chunk
ids and content are the Python path's; zstd frames may differ in bytes but
decode to the same content, with its length in the frame header.

The same module walks a point's tree against its previous point's cache
(``TreeWalk``, ADR 0085): ``NativeTreeCompare`` is ``compare.TreeCompare`` with
each step one call, the GIL released for its walk. It lists, lstat()s, keeps,
drops and reports entries as ``scan._list_dir`` does, pairs them with the
cache's records as ``CacheCursor`` does and hands back the same ``Step``:
settled entries as ``Known`` runs of encoded bytes, files to read as
``Changed`` items. It is used where it walks exactly as the Python path
(``tree_compare``): the Linux exclusions, a normalized root, the UTF-8 file
system encoding.

Without the module, or with ``STRONGROOM_AGENT_NATIVE=0`` (read by the
composition root, ``from_env``), the agent reads and walks on the Python path.
"""

from __future__ import annotations

import enum
import importlib
import logging
import os
import posixpath
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from strongroom.agent.v1 import gateway_pb2

from strongroom_agent import cache
from strongroom_agent.backup.compare import Changed, Known, Step, TreeCompare
from strongroom_agent.backup.scan import ScanItem
from strongroom_agent.backup.stages import Chunk
from strongroom_agent.chunking import ZSTD_LEVEL, ChunkParams
from strongroom_agent.exclusions import LinuxExclusions
from strongroom_agent.jobs import FileError

log = logging.getLogger(__name__)

NATIVE_ENV = "STRONGROOM_AGENT_NATIVE"  # "0": the Python read path even where the extension is built
MODULE = "strongroom_agent._native"
FORMAT = 1  # the shape of the module's results this code decodes (the module's own FORMAT)
WALK_FORMAT = 1  # the shape of ``TreeWalk.step``'s results this code decodes (the module's WALK_FORMAT)


class Code(enum.IntEnum):
    """What became of one file of a native group (``native/src/lib.rs`` has the same values)."""

    OK = 0  # read consistently
    TOO_BIG = 1  # larger than one chunk when read: the caller reads it on the Python path
    OS_ERROR = 2  # open, read or fstat failed with ``errno``
    NOT_REGULAR = 3  # not a regular file once opened
    CHANGED = 4  # changed while being read, twice


@dataclass(slots=True)
class NativeRead:
    """One file's outcome: ``stat`` and ``chunk`` (None for an empty file) when ``code`` is OK."""

    code: Code
    bytes_read: int
    stat: os.stat_result | None = None
    chunk: Chunk | None = None
    errno: int = 0


def _stat_result(fields: Sequence[int]) -> os.stat_result:
    """The ``os.stat_result`` ``os.fstat`` gives for these fields (CPython's own arithmetic for the times)."""
    mode, ino, dev, nlink, uid, gid, size, a_s, a_ns, m_s, m_ns, c_s, c_ns, blksize, blocks, rdev = fields
    return os.stat_result(
        (
            *(mode, ino, dev, nlink, uid, gid, size, a_s, m_s, c_s),
            *(a_s + a_ns * 1e-9, m_s + m_ns * 1e-9, c_s + c_ns * 1e-9),
            *(a_s * 1_000_000_000 + a_ns, m_s * 1_000_000_000 + m_ns, c_s * 1_000_000_000 + c_ns),
            *(blksize, blocks, rdev),
        )
    )


class NativeSmallFiles:
    """The extension's group read, with its results decoded (thread-safe: each call is independent)."""

    def __init__(self, module: ModuleType) -> None:
        self._read = module.read_small_files
        walk_format = getattr(module, "WALK_FORMAT", None)
        self._walk: Any = module.TreeWalk if walk_format == WALK_FORMAT else None
        if self._walk is None:
            log.warning(
                "%s has walk format %r, expected %d: the walk runs on the Python path", MODULE, walk_format, WALK_FORMAT
            )

    def tree_compare(self, python: TreeCompare) -> NativeTreeCompare | None:
        """The native walk made from ``python``'s arguments (not yet stepped), or None where it might walk otherwise.

        It walks only where its rules are the Python path's by construction: the
        Linux exclusions (other ``Exclusions`` are Python code), a root that is
        already normalized (the exclusions compare normalized paths) and the
        UTF-8 file system encoding with ``surrogateescape`` (names and paths go
        between the two as ``os.fsencode``/``os.fsdecode`` bytes).
        """
        root, exclusions, cursor = python.root, python.exclusions, python.cursor
        if self._walk is None or type(exclusions) is not LinuxExclusions:
            return None
        if posixpath.normpath(root) != root or root.startswith("//"):
            return None
        if (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()) != ("utf-8", "surrogateescape"):
            return None
        walk = self._walk(
            os.fsencode(root),
            [os.fsencode(d) for d in exclusions.dirs],
            None if cursor is None else (cursor.info.path, cursor.info.body_offset, cursor.info.count),
            python.racy_before_ns,
            python.step_entries,
            python.run_entries,
        )
        return NativeTreeCompare(walk, root, cursor)

    def read(self, paths: list[str], params: ChunkParams) -> list[NativeRead]:
        """Read ``paths`` (one chunk each at most: larger ones come back TOO_BIG), GIL released throughout.

        Blocks the calling (worker) thread for the whole group; charges nothing to a throttle
        (the caller does, with the bytes read).
        """
        results: list[NativeRead] = []
        for raw in self._read(paths, params.key, ZSTD_LEVEL, params.min_size):
            code, bytes_read, *rest = raw
            result = NativeRead(Code(code), bytes_read)
            if result.code is Code.OK:
                fields, chunk = rest
                result.stat = _stat_result(fields)
                if chunk is not None:
                    cid, compressed, payload, raw_length = chunk
                    encoding = gateway_pb2.CHUNK_COMPRESSION_ZSTD if compressed else gateway_pb2.CHUNK_COMPRESSION_NONE
                    result.chunk = Chunk(cid, payload, 0, encoding, raw_length)
            elif result.code is Code.OS_ERROR:
                result.errno = rest[0]
            results.append(result)
        return results


class NativeTreeCompare:
    """``compare.TreeCompare`` as one native call per step (``step`` in a worker thread; never two at once).

    The native walk reads the cache file itself; ``cursor`` (the Python cursor
    over the same validated file, not read here) carries what the commit asks
    of it afterwards: ``broken`` and ``records_read`` are updated after each step.
    """

    def __init__(self, walk: Any, root: str, cursor: cache.CacheCursor | None) -> None:
        self._walk = walk
        self._root = root
        self._cursor = cursor

    def end_walk(self) -> None:
        """Walk no further (the root could not be walked): the next steps delete the cached paths left."""
        self._walk.end_walk()

    def step(self) -> Step:
        """Walk on for up to ``step_entries`` entries; raises OSError when the root cannot be lstat()ed."""
        code, items, errors, counters, done = self._walk.step()
        if code:
            raise OSError(code, os.strerror(code), self._root)
        out = Step(done=done)
        out.files_scanned, out.bytes_scanned, out.files_unchanged, out.bytes_unchanged = counters
        for item in items:
            if item[0] == 0:
                _, records, count, first, last, spool, spool_entries = item
                out.items.append(Known(records, count, first, last, spool, spool_entries))
                continue
            _, rel, path, fields, cached = item
            record = None
            if cached is not None:
                cached_path, dev, ino, size, mtime_ns, ctime_ns, trusted, raw, body, kind = cached
                key = (dev, ino, size, mtime_ns, ctime_ns)
                record = cache.CacheRecord(cached_path, key, trusted, raw, body, kind)
            scanned = ScanItem(rel.decode(), os.fsdecode(path), _stat_result(fields))
            out.items.append(Changed(scanned, rel, record))
        out.errors.extend(FileError(os.fsdecode(path), _walk_problem(kind, code)) for kind, path, code in errors)
        cursor = self._cursor
        if cursor is not None:
            cursor.records_read = self._walk.records_read
            broken = self._walk.broken
            if broken is not None and not cursor.broken:
                log.warning("backup cache %s %s", cursor.info.path, broken)
                cursor.broken = True
        return out


def _walk_problem(kind: int, code: int) -> str:
    """A native walk error's message, worded as ``scan._list_dir`` words it."""
    if kind == 0:
        return f"cannot list directory: {os.strerror(code)}"
    if kind == 1:
        return "name is not valid UTF-8"
    if kind == 3:
        return "symlink target is not valid UTF-8"
    return os.strerror(code)


def load() -> NativeSmallFiles | None:
    """The extension's group read, or None when it is not built (or built for another result shape)."""
    try:
        module = importlib.import_module(MODULE)
    except ImportError:
        return None
    if getattr(module, "FORMAT", None) != FORMAT:
        log.warning("%s has result format %r, expected %d: not used", MODULE, getattr(module, "FORMAT", None), FORMAT)
        return None
    return NativeSmallFiles(module)


def from_env(environ: Mapping[str, str]) -> NativeSmallFiles | None:
    """The composition root's choice: the native path unless ``STRONGROOM_AGENT_NATIVE=0`` or not built."""
    if environ.get(NATIVE_ENV, "1") == "0":
        log.info("small files on the Python read path (%s=0)", NATIVE_ENV)
        return None
    native = load()
    if native is None:
        log.info("small files on the Python read path (the native extension is not built: `make native`)")
    else:
        log.info("small files on the native read path (ADR 0080), the walk on the native path (ADR 0085)")
    return native
