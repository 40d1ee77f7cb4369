"""The native read path: one GIL-free call per group of one-chunk files (ADR 0080) or per large-file step (ADR 0083).

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

For a larger file, ``NativeCutter`` is ``FileReader``'s step: it reads the
descriptor the agent opened, cuts it where pyfastcdc cuts (its own FastCDC,
the same cut points), and hashes and compresses each chunk, with the GIL
released for the whole step; the bytes after the last cut wait for the next.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from strongroom.agent.v1 import gateway_pb2

from strongroom_agent import cache
from strongroom_agent.backup.compare import Changed, Known, Step, TreeCompare
from strongroom_agent.backup.read import CHANGED_WHILE_READ, NOT_REGULAR, READ_SIZE, SmallRead, read_problem
from strongroom_agent.backup.scan import ScanItem, file_entry
from strongroom_agent.backup.stages import Chunk
from strongroom_agent.chunking import ZSTD_LEVEL, ChunkParams
from strongroom_agent.exclusions import LinuxExclusions
from strongroom_agent.jobs import FileError, JobCanceled
from strongroom_agent.throttle import Unlimited

if TYPE_CHECKING:
    from strongroom_agent.backup.context import JobContext

# One file of a small-file group on the Python path (``Reader._read_small_file``).
ReadPython = Callable[[ScanItem], SmallRead]

log = logging.getLogger(__name__)

NATIVE_ENV = "STRONGROOM_AGENT_NATIVE"  # "0": the Python read path even where the extension is built
MODULE = "strongroom_agent._native"
FORMAT = 1  # the shape of the module's results this code decodes (the module's own FORMAT)
CDC_FORMAT = 2  # the shape of ``FileCutter``'s arguments and step results this code uses (the module's CDC_FORMAT)
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


def _chunk(raw: tuple[bytes, bool, bytes, int]) -> Chunk:
    """A chunk as the extension returns it, ``(id, compressed, payload, raw_length)``, encoded already."""
    cid, compressed, payload, raw_length = raw
    encoding = gateway_pb2.CHUNK_COMPRESSION_ZSTD if compressed else gateway_pb2.CHUNK_COMPRESSION_NONE
    return Chunk(cid, payload, 0, encoding, raw_length)


@dataclass(slots=True)
class CutStep:
    """One native step of a large file (``NativeCutter.step``)."""

    # Compressing: encoded as ``chunking.compress`` does, ``raw_length`` each one's content; else raw
    # content with compression UNSPECIFIED, as the Python reader's (the compress stage encodes them).
    chunks: list[Chunk]
    cut_bytes: int  # the chunks' raw content, in all
    bytes_read: int
    done: bool  # the file's end was cut
    errno: int  # a read failed with it (0: none); the chunks before it are in ``chunks``


class NativeCutter:
    """One large file read, cut (pyfastcdc's cut points), hashed and compressed per GIL-free call (ADR 0083).

    Not thread-safe: ``FileReader`` calls it under its lock. It holds the bytes read but not
    yet cut between steps (less than twice the maximum chunk size) until ``reset`` or ``release``.
    Made with ``compress`` false, it returns raw chunks: the compress stage then encodes only
    those dedup passes, as on the Python path.
    """

    def __init__(self, cutter: Any, *, compress: bool) -> None:
        self._cutter = cutter
        self.compress = compress

    def step(self, fd: int, one_read: int | None, batch_bytes: int) -> CutStep:
        """Read ``fd`` and cut until ``batch_bytes`` are cut, the file's end is, or (``one_read``) one read was made.

        ``one_read``: at most one read, of at most that many bytes (under a throttle, which the
        caller charges after each call); None: as many reads as the buffer takes. Reads go on
        from the descriptor's offset, and cuts are made only where pyfastcdc's stream chunker
        makes them (the maximum chunk size buffered, or the end of the file), so a call may
        cut nothing. Charges nothing to a throttle.
        """
        raws, bytes_read, done, errno = self._cutter.step(fd, one_read, batch_bytes)
        cut_bytes = sum(raw[3] for raw in raws)
        if self.compress:
            chunks = [_chunk(raw) for raw in raws]
        else:
            chunks = [Chunk(cid, payload, 0) for cid, _, payload, _ in raws]
        return CutStep(chunks, cut_bytes, bytes_read, done, errno)

    def reset(self, read_end: int | None, ends_at: int | None = None) -> None:
        """Start over: forget what was read (the caller seeks the descriptor to 0, or opened it).

        ``read_end``: read at most that many bytes in all, and take them as the whole file
        (``FileReader`` reads a file of up to ``WHOLE_FILE_BYTES`` as its size and one byte more);
        None: read until a read returns nothing. ``ends_at``: a read that brings the total to
        exactly that many bytes ends the file (``FileReader._read_small``'s rule).
        """
        self._cutter.reset(read_end, ends_at)

    def release(self) -> None:
        """Free the buffer: the file is done."""
        self._cutter.release()


class NativeExtension:
    """The extension: the small-file group read (results decoded) and large-file cutters (thread-safe)."""

    def __init__(self, module: ModuleType) -> None:
        self._read = module.read_small_files
        cdc_format = getattr(module, "CDC_FORMAT", None)
        self._cutter: Any = module.FileCutter if cdc_format == CDC_FORMAT else None
        if self._cutter is None:
            log.warning(
                "%s has cutter format %r, expected %d: large files on the Python path", MODULE, cdc_format, CDC_FORMAT
            )
        walk_format = getattr(module, "WALK_FORMAT", None)
        self._walk: Any = module.TreeWalk if walk_format == WALK_FORMAT else None
        if self._walk is None:
            log.warning(
                "%s has walk format %r, expected %d: the walk runs on the Python path", MODULE, walk_format, WALK_FORMAT
            )

    def cutter(self, params: ChunkParams, *, compress: bool) -> NativeCutter | None:
        """A cutter for one file with ``params``' FastCDC sizes, gear seed and chunk-id key (None: a stale build).

        ``compress``: zstd in the step, GIL-free (for a file the previous point did not have,
        whose chunks are almost all new); false: raw chunks, compressed after dedup by the
        compress stage (a modified file, whose chunks are mostly known: issue 13).
        """
        if self._cutter is None:
            return None
        level = ZSTD_LEVEL if compress else None
        return NativeCutter(
            self._cutter(params.key, level, params.min_size, params.avg_size, params.max_size, params.seed),
            compress=compress,
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
                    result.chunk = _chunk(chunk)
            elif result.code is Code.OS_ERROR:
                result.errno = rest[0]
            results.append(result)
        return results

    def read_group(self, ctx: JobContext, items: list[ScanItem], read_python: ReadPython) -> list[SmallRead]:
        """A small-file group through the native extension, GIL released per call (ADR 0080).

        One call for the group; under a read throttle, calls of about ``READ_SIZE`` scanned
        bytes each, the bytes read charged after each call (the Python path charges after
        each read, of at most ``READ_SIZE``). A file larger than one chunk when opened is
        read on the Python path (``read_python``: FastCDC cuts it there). The job's stop is checked before
        each call, as the Python path checks it before each read.
        """
        limit = None if isinstance(ctx.throttle, Unlimited) else READ_SIZE
        calls: list[list[ScanItem]] = [[]]
        size = 0
        for item in items:
            if limit is not None and calls[-1] and size + item.st.st_size > limit:
                calls.append([])
                size = 0
            calls[-1].append(item)
            size += item.st.st_size
        results: list[SmallRead] = []
        for call in calls:
            if ctx.stop_threads.is_set():
                raise JobCanceled
            reads = self.read([item.path for item in call], ctx.params)
            read_bytes = sum(read.bytes_read for read in reads)
            if read_bytes:  # as the Python path, which charges only reads that brought bytes
                ctx.throttle.acquire(read_bytes)
            results.extend(_from_native(item, read, read_python) for item, read in zip(call, reads, strict=True))
        return results


def _from_native(item: ScanItem, read: NativeRead, read_python: ReadPython) -> SmallRead:
    """A native outcome as the Python path's ``SmallRead`` (same entry, chunk and problem text)."""
    if read.code is Code.TOO_BIG:
        result = read_python(item)
        result.bytes_read += read.bytes_read
        return result
    result = SmallRead(bytes_read=read.bytes_read)
    if read.code is Code.OK:
        assert read.stat is not None
        result.before = read.stat
        result.entry = file_entry(item, read.stat)
        if read.chunk is not None:
            result.chunks = [read.chunk]
            result.entry.chunk_ids.append(read.chunk.id)
    elif read.code is Code.OS_ERROR:
        result.problem = read_problem(OSError(read.errno, os.strerror(read.errno), item.path))
    elif read.code is Code.NOT_REGULAR:
        result.problem = NOT_REGULAR
    else:
        result.problem = CHANGED_WHILE_READ
    return result


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


def load() -> NativeExtension | None:
    """The extension's group read, or None when it is not built (or built for another result shape)."""
    try:
        module = importlib.import_module(MODULE)
    except ImportError:
        return None
    if getattr(module, "FORMAT", None) != FORMAT:
        log.warning("%s has result format %r, expected %d: not used", MODULE, getattr(module, "FORMAT", None), FORMAT)
        return None
    return NativeExtension(module)


def from_env(environ: Mapping[str, str]) -> NativeExtension | None:
    """The composition root's choice: the native path unless ``STRONGROOM_AGENT_NATIVE=0`` or not built."""
    if environ.get(NATIVE_ENV, "1") == "0":
        log.info("files on the Python read path (%s=0)", NATIVE_ENV)
        return None
    native = load()
    if native is None:
        log.info("files on the Python read path (the native extension is not built: `make native`)")
    else:
        log.info("files on the native read path (ADR 0080, 0083), the walk on the native path (ADR 0085)")
    return native
