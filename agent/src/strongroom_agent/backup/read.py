"""Reading a file for the backup: open it safely, read and chunk it in bounded steps.

A file is opened without following a symlink, blocking on a FIFO, touching
atime or taking a terminal as its controlling one, and read in ``READ_SIZE``
pieces charged to the job's read throttle. Files up to ``WHOLE_FILE_BYTES``
are read whole and cut in memory; larger ones are cut as a stream. Each step
produces at most a read batch of chunk content, so a worker thread never
holds more. A file counts as read consistently only
when its inode, size, mtime and ctime did not move while it was read; a file
that changes is read once more and left out if it changes again
(``CHANGED_WHILE_READ``), which makes the job PARTIAL_COMPLETE.

System calls per small file (ADR 0079): ``open``, ``fstat``, one ``read``,
``fstat``, ``close`` (it was seven: an ``lseek`` to 0 of the descriptor just
opened, and a second ``read`` to see the end). Each call lets go of the GIL,
and in a tree of small files every hand-over between the reading, walking
and event-loop threads was a futex wake-up and a context switch.
"""

from __future__ import annotations

import asyncio
import functools
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import pyfastcdc
from strongroom.common.v1 import common_pb2

from strongroom_agent.backup.context import JobContext, OpenFile
from strongroom_agent.backup.scan import ScanItem, file_entry
from strongroom_agent.backup.stages import ByteBudget, Chunk, Deduper
from strongroom_agent.chunking import ChunkParams, chunk_id
from strongroom_agent.jobs import FileError, JobCanceled, reason
from strongroom_agent.throttle import ReadThrottle, Unlimited

if TYPE_CHECKING:
    # Not at run time: the native module imports this one.
    from strongroom_agent.backup.native import NativeCutter

T = TypeVar("T")

READ_SIZE = 1 << 20  # bytes per read() call, so the throttle stays smooth
# Files up to this size are read whole and cut in memory (FastCDC's stream mode
# allocates a max-chunk-size buffer per file, which dominated the CPU time of
# trees of small files); at most ``workers`` such buffers exist at a time.
WHOLE_FILE_BYTES = 8 << 20
# One file (or small-file group) in flight per worker thread. More (8 per thread) made an unthrottled
# tree of small files 10% faster, but under a read throttle every file then finishes late and uploads
# come in bursts, which delays progress and resumable state (tests/e2e/test_resume.py).
READERS_PER_WORKER = 1

# A read file's entry and the stat it was read under; None when it was left out (and reported).
FileOutcome = tuple[common_pb2.FileEntry, os.stat_result]


class FileProblem(Exception):
    """A per-file failure: the file is left out and the job becomes PARTIAL_COMPLETE."""


CHANGED_WHILE_READ = "file changed while being read"
NOT_REGULAR = "no longer a regular file"


def read_problem(exc: FileProblem | OSError) -> str:
    """Why a file is left out of the point, as reported per file."""
    if isinstance(exc, FileProblem):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "vanished during the backup"
    return reason(exc)


def open_for_backup(path: str) -> int:
    """Open a file read-only without following a symlink, blocking on a FIFO, touching atime, or taking a terminal.

    ``O_NOCTTY``: a terminal swapped in for a scanned file must not become the
    controlling terminal of the agent, a service's session leader without one
    (its hang-up would then send the agent SIGHUP).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    noatime = getattr(os, "O_NOATIME", 0)
    if noatime:
        try:
            return os.open(path, flags | noatime)
        except PermissionError:
            pass  # O_NOATIME needs ownership or CAP_FOWNER
    return os.open(path, flags)


@dataclass
class SmallRead:
    """The outcome of one file of a small-file group (see ``read_small_files``)."""

    chunks: list[Chunk] = field(default_factory=list)
    bytes_read: int = 0
    before: os.stat_result | None = None
    entry: common_pb2.FileEntry | None = None  # the file's entry, when it was read consistently
    problem: str = ""  # why the file is left out ("" if it was read consistently)
    too_big: bool = False  # grew past the whole-file limit since the scan: read it on its own


@dataclass
class Step:
    chunks: list[Chunk]  # charge 0; raw content, or encoded already by a compressing native cutter
    bytes_read: int
    done: bool
    consistent: bool = False


def _snapshot(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileReader:
    """Reads and chunks one file in worker threads, one bounded step at a time.

    All methods take a lock, so ``close`` submitted after a cancellation waits
    for a step still running in another thread. With a native ``cutter`` (ADR
    0083) each step reads, cuts, hashes (and, for a new file, compresses) in one
    GIL-free call (or, under a read throttle, calls of at most ``READ_SIZE`` read
    bytes each); the chunks and cut points are the Python path's.
    """

    def __init__(
        self,
        path: str,
        params: ChunkParams,
        open_file: OpenFile,
        throttle: ReadThrottle,
        stop: threading.Event,
        batch_bytes: int,
        cutter: NativeCutter | None = None,
    ) -> None:
        self.path = path
        self._cutter = cutter
        self._params = params
        self._open_file = open_file
        self._throttle = throttle
        self._stop = stop
        self._batch_bytes = batch_bytes
        self._lock = threading.Lock()
        self._fd = -1
        self._closed = False
        self.before: os.stat_result | None = None
        self._chunks: Iterator[pyfastcdc.Chunk] = iter(())
        self._whole: bytes | None = None  # a small file's content, as read (see _read_small)
        self._total = 0
        self._delta = 0

    def _start(self, *, opened: bool = False) -> None:
        """(Re)start reading from offset 0 under a fresh ``fstat``; a descriptor just ``opened`` is at 0 already."""
        assert self._fd >= 0
        if not opened:
            os.lseek(self._fd, 0, os.SEEK_SET)
        self.before = os.fstat(self._fd)
        if not stat.S_ISREG(self.before.st_mode):
            raise FileProblem(NOT_REGULAR)
        self._total = 0
        self._whole = None
        if self._cutter is not None:
            # The reads below: up to WHOLE_FILE_BYTES the size and one byte to notice growth (under
            # READ_SIZE, ending once the size is in); beyond, until a read returns nothing.
            size = self.before.st_size
            whole = size <= WHOLE_FILE_BYTES
            self._cutter.reset(size + 1 if whole else None, size if size < READ_SIZE else None)
        elif self.before.st_size < READ_SIZE:
            self._whole = self._read_small(self.before.st_size)
            self._chunks = iter(self._params.chunker().cut_buf(self._whole))
        elif self.before.st_size <= WHOLE_FILE_BYTES:
            self._chunks = iter(self._params.chunker().cut_buf(self._read_whole(self.before.st_size)))
        else:
            self._chunks = iter(self._params.chunker().cut_stream(self))

    def _read_small(self, size: int) -> bytes:
        """A file smaller than ``READ_SIZE`` as one ``bytes`` (throttled); one byte more to notice growth.

        Read into ``bytes`` rather than a buffer: a file of one chunk (every file under the
        chunker's minimum size) is then its chunk's content as it is, without a copy (ADR 0071).
        Once ``size`` bytes are in, a read that comes back without the extra byte is the end:
        no second ``read`` to see an empty one (a file that grew meanwhile fails the stat check
        after the read). A short read before ``size`` bytes reads on, as before.
        """
        pieces: list[bytes] = []
        got = 0
        left = size + 1
        while left:
            if self._stop.is_set():
                raise JobCanceled
            piece = os.read(self._fd, left)
            if not piece:
                break
            self._total += len(piece)
            self._delta += len(piece)
            self._throttle.acquire(len(piece))
            pieces.append(piece)
            got += len(piece)
            left -= len(piece)
            if got == size:
                break
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _read_whole(self, size: int) -> memoryview:
        """The file's content, read through :meth:`readinto` (throttled); one byte more to notice growth."""
        buffer = memoryview(bytearray(size + 1))
        got = 0
        while got < len(buffer):
            n = self.readinto(buffer[got:])
            if n == 0:
                break
            got += n
        return buffer[:got]

    def readinto(self, buffer: memoryview) -> int:
        """The FastCDC stream source: bounded reads, charged to the throttle."""
        if self._stop.is_set():
            raise JobCanceled
        n = os.readv(self._fd, [buffer[:READ_SIZE]])
        self._total += n
        self._delta += n
        if n:
            self._throttle.acquire(n)
        return n

    def step(self) -> Step:
        with self._lock:
            if self._closed:
                raise JobCanceled
            if self._fd < 0:
                self._fd = self._open_file(self.path)
                self._start(opened=True)
            if self._cutter is not None:
                return self._native_step(self._cutter)
            chunks: list[Chunk] = []
            produced = 0
            whole = self._whole
            for chunk in self._chunks:
                data = chunk.data
                # The stream chunker reuses its buffer, and a chunk of a larger buffer would keep all of it.
                content = whole if whole is not None and len(data) == len(whole) else bytes(data)
                chunks.append(Chunk(chunk_id(self._params.key, content), content, 0))
                produced += len(content)
                if produced >= self._batch_bytes:
                    return Step(chunks, self._take_delta(), done=False)
            return Step(chunks, self._take_delta(), done=True, consistent=self._consistent())

    def _consistent(self) -> bool:
        """Whether the file read to its end is the one ``_start`` saw (inode, size, times; every byte read)."""
        assert self.before is not None
        after = os.fstat(self._fd)
        return _snapshot(after) == _snapshot(self.before) and self._total == after.st_size

    def _native_step(self, cutter: NativeCutter) -> Step:
        """:meth:`step` through the native cutter: one call unthrottled, one call per read under a throttle.

        Under a throttle each call makes one read of at most ``READ_SIZE``, charged after it,
        as the Python path charges each of its reads; the job's stop is checked before each
        call. A failed read raises the ``OSError`` ``os.readv`` would have raised.
        """
        limit = None if isinstance(self._throttle, Unlimited) else READ_SIZE
        chunks: list[Chunk] = []
        produced = 0
        while True:
            if self._stop.is_set():
                raise JobCanceled
            cut = cutter.step(self._fd, limit, self._batch_bytes - produced)
            self._total += cut.bytes_read
            self._delta += cut.bytes_read
            if cut.bytes_read:
                self._throttle.acquire(cut.bytes_read)
            if cut.errno:
                raise OSError(cut.errno, os.strerror(cut.errno))
            chunks.extend(cut.chunks)
            produced += cut.cut_bytes
            if cut.done:
                return Step(chunks, self._take_delta(), done=True, consistent=self._consistent())
            if produced >= self._batch_bytes:
                return Step(chunks, self._take_delta(), done=False)

    def _take_delta(self) -> int:
        """Bytes read since the last step reported (including reads done while (re)starting)."""
        delta, self._delta = self._delta, 0
        return delta

    def restart(self) -> None:
        with self._lock:
            self._start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._whole = None
            if self._cutter is not None:
                self._cutter.release()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class Reader:
    """The read stage: reads changed files in the job's worker threads and hands their chunks to dedup.

    A file larger than ``small_file_bytes`` is read on its own task, one step
    at a time; smaller ones are read in groups, one worker-thread hop per group
    (``add_small`` / ``flush``). Chunks are charged to the memory budget before
    they are queued for dedup. Each file's ``FileOutcome`` (None when it was
    left out and reported) settles the future the spool writer waits on.
    """

    def __init__(self, ctx: JobContext, budget: ByteBudget, out: Deduper) -> None:
        self._ctx = ctx
        self._budget = budget
        self._out = out
        self._permits = asyncio.Semaphore(ctx.workers * READERS_PER_WORKER)
        self._reading = 0  # permits held
        # Changed small files scanned but not yet handed to a worker thread.
        self._small: list[tuple[ScanItem, asyncio.Future[FileOutcome | None]]] = []
        self._small_bytes = 0

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._ctx.executor, fn)

    def in_flight(self) -> int:
        """Files and small-file groups being read (each holds a permit)."""
        return self._reading

    async def _acquire(self) -> None:
        await self._permits.acquire()
        self._reading += 1

    def _release(self) -> None:
        self._reading -= 1
        self._permits.release()

    async def read(self, group: asyncio.TaskGroup, item: ScanItem, *, new: bool) -> asyncio.Task[FileOutcome | None]:
        """Start reading one file on its own once a permit is free; the task gives its outcome.

        ``new``: the previous point had no record for the file's path. Its chunks are then
        almost all new, and a native cutter compresses them as it reads; a modified file's
        chunks go to dedup raw and only the new ones are compressed (issue 13, ADR 0083).
        """
        await self._acquire()
        return group.create_task(self._file_entry(item, compress=new))

    async def add_small(
        self, group: asyncio.TaskGroup, item: ScanItem, future: asyncio.Future[FileOutcome | None]
    ) -> None:
        """Add a changed small file to the pending group; start the group when it is full."""
        self._small.append((item, future))
        self._small_bytes += item.st.st_size
        limits = self._ctx.limits
        if len(self._small) >= limits.small_batch_files or self._small_bytes >= limits.small_batch_bytes:
            await self.flush(group)

    async def flush(self, group: asyncio.TaskGroup) -> None:
        """Start the pending small-file group, if any, once a permit is free."""
        if self._small:
            await self._acquire()
            group.create_task(self._small_group(self._small))
            self._small, self._small_bytes = [], 0

    def _reader(self, item: ScanItem, *, compress: bool) -> FileReader:
        """``item``'s reader; a native one (when built) compresses in its steps if told to ``compress``."""
        ctx = self._ctx
        # The native cutter reads the descriptor ``open_file`` gave, whatever opened it (ADR 0083).
        cutter = ctx.native.cutter(ctx.params, compress=compress) if ctx.native is not None else None
        return FileReader(
            item.path, ctx.params, ctx.open_file, ctx.throttle, ctx.stop_threads, ctx.limits.read_batch_bytes, cutter
        )

    async def _file_entry(self, item: ScanItem, *, compress: bool) -> FileOutcome | None:
        """Read one file (holding a reader permit, released at the end); None if it failed (reported)."""
        try:
            return await self._read_alone(item, compress=compress)
        finally:
            self._release()

    async def _read_alone(self, item: ScanItem, *, compress: bool) -> FileOutcome | None:
        ctx = self._ctx
        reader = self._reader(item, compress=compress)
        try:
            result = await self._read_file(reader, item)
            ctx.stats.files_read += 1
            return result
        except (FileProblem, OSError) as exc:
            ctx.errors.append(FileError(item.path, read_problem(exc)))
        finally:
            # Through the executor: a cancelled step may still be running in a thread.
            ctx.executor.submit(reader.close)
        return None

    def _read_small_files(self, items: list[ScanItem]) -> list[SmallRead]:
        """Read and chunk a group of small files in the calling (worker) thread, one file after another.

        Same rules as :meth:`_read_file`: a file that changes during its read
        is read once more, and left out if it changes again. A file that grew
        past the whole-file limit since the scan is marked ``too_big`` and read
        on its own afterwards. With the native extension (``ctx.native``), the
        files of at most one chunk are read by it (``NativeExtension.read_group``).
        """
        if self._ctx.native is not None:
            return self._ctx.native.read_group(self._ctx, items, self._read_small_file)
        return [self._read_small_file(item) for item in items]

    def _read_small_file(self, item: ScanItem) -> SmallRead:
        """One file of a small-file group on the Python path (or the native cutter's, past one chunk).

        A native cutter compresses in its step, as the native group read does (ADR 0080): the
        group does not know which files the previous point had, and its files are small.
        """
        result = SmallRead()
        reader = self._reader(item, compress=True)
        try:
            for attempt in range(2):
                if attempt:
                    reader.restart()
                step = reader.step()
                result.bytes_read += step.bytes_read
                if not step.done:
                    result.too_big = True
                    break
                if step.consistent:
                    assert reader.before is not None
                    result.chunks = step.chunks
                    result.before = reader.before
                    # Built here, in the worker thread: less per-file work on the event loop.
                    result.entry = file_entry(item, reader.before)
                    result.entry.chunk_ids.extend(chunk.id for chunk in step.chunks)
                    break
            else:
                result.problem = CHANGED_WHILE_READ
        except (FileProblem, OSError) as exc:
            result.problem = read_problem(exc)
        finally:
            reader.close()
        return result

    async def _small_group(self, files: list[tuple[ScanItem, asyncio.Future[FileOutcome | None]]]) -> None:
        """Read a group of small files in one worker-thread hop, hand their chunks on as one group, settle each slot."""
        ctx = self._ctx
        try:
            results = await self._in_thread(functools.partial(self._read_small_files, [item for item, _ in files]))
            chunks = [chunk for result in results if result.entry is not None for chunk in result.chunks]
            await self._to_dedup(chunks)
            for (item, future), result in zip(files, results, strict=True):
                ctx.stats.bytes_read += result.bytes_read
                if result.too_big:
                    future.set_result(await self._read_alone(item, compress=True))  # as the group would have
                    continue
                if result.problem:
                    ctx.errors.append(FileError(item.path, result.problem))
                    future.set_result(None)
                    continue
                assert result.before is not None and result.entry is not None
                ctx.stats.files_read += 1
                future.set_result((result.entry, result.before))
        finally:
            for _, future in files:
                future.cancel()  # no-op for settled slots; the job is failing otherwise
            self._release()

    async def _to_dedup(self, chunks: list[Chunk]) -> None:
        """Hand read chunks to the dedup stage within the memory budget, setting each one's ``charge``.

        The chunks of a step or small-file group (at most about a read batch) are
        charged in one acquire and handed on as one group when they fit the
        budget together, each chunk then holding its own share; else chunk by chunk.
        A chunk is charged what it holds: its content, or its payload when the
        native reader encoded it already.
        """
        total = sum(len(chunk.content) for chunk in chunks)
        if 0 < total <= self._budget.capacity:
            await self._budget.acquire(total)
            for chunk in chunks:
                chunk.charge = len(chunk.content)
            await self._out.put(chunks)
        else:
            for chunk in chunks:
                chunk.charge = await self._budget.acquire(len(chunk.content))
                await self._out.put([chunk])

    async def _read_file(self, reader: FileReader, item: ScanItem) -> FileOutcome:
        ctx = self._ctx
        for attempt in range(2):
            if attempt:
                await self._in_thread(reader.restart)
            ids: list[bytes] = []
            while True:
                if ctx.cancel.is_set():
                    raise JobCanceled
                step = await self._in_thread(reader.step)
                ctx.stats.bytes_read += step.bytes_read
                await self._to_dedup(step.chunks)
                ids.extend(chunk.id for chunk in step.chunks)
                if step.done:
                    break
            if step.consistent:
                assert reader.before is not None
                entry = file_entry(item, reader.before)
                entry.chunk_ids.extend(ids)
                return entry, reader.before
        raise FileProblem(CHANGED_WHILE_READ)
