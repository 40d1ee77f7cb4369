"""Reading a file for the backup: open it safely, read and chunk it in bounded steps.

A file is opened without following a symlink, blocking on a FIFO or touching
atime, and read in ``READ_SIZE`` pieces charged to the job's read throttle.
Files up to ``WHOLE_FILE_BYTES`` are read whole and cut in memory; larger ones
are cut as a stream. Each step produces at most a read batch of chunk content,
so a worker thread never holds more. A file counts as read consistently only
when its inode, size, mtime and ctime did not move while it was read; a file
that changes is read once more and left out if it changes again
(``CHANGED_WHILE_READ``), which makes the job PARTIAL_COMPLETE.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pyfastcdc import Chunk
from strongroom.common.v1 import common_pb2

from strongroom_agent.chunking import ChunkParams, chunk_id
from strongroom_agent.jobs import JobCanceled, reason
from strongroom_agent.throttle import ReadThrottle

OpenFile = Callable[[str], int]

READ_SIZE = 1 << 20  # bytes per read() call, so the throttle stays smooth
# Files up to this size are read whole and cut in memory (FastCDC's stream mode
# allocates a max-chunk-size buffer per file, which dominated the CPU time of
# trees of small files); at most ``workers`` such buffers exist at a time.
WHOLE_FILE_BYTES = 8 << 20


class FileProblem(Exception):
    """A per-file failure: the file is left out and the job becomes PARTIAL_COMPLETE."""


CHANGED_WHILE_READ = "file changed while being read"


def read_problem(exc: FileProblem | OSError) -> str:
    """Why a file is left out of the point, as reported per file."""
    if isinstance(exc, FileProblem):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "vanished during the backup"
    return reason(exc)


def open_for_backup(path: str) -> int:
    """Open a file read-only without following a symlink, blocking on a FIFO, or touching atime."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
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

    chunks: list[tuple[bytes, bytes]] = field(default_factory=list)
    bytes_read: int = 0
    before: os.stat_result | None = None
    entry: common_pb2.FileEntry | None = None  # the file's entry, when it was read consistently
    problem: str = ""  # why the file is left out ("" if it was read consistently)
    too_big: bool = False  # grew past the whole-file limit since the scan: read it on its own


@dataclass
class Step:
    chunks: list[tuple[bytes, bytes]]
    bytes_read: int
    done: bool
    consistent: bool = False


def _snapshot(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileReader:
    """Reads and chunks one file in worker threads, one bounded step at a time.

    All methods take a lock, so ``close`` submitted after a cancellation waits
    for a step still running in another thread.
    """

    def __init__(
        self,
        path: str,
        params: ChunkParams,
        open_file: OpenFile,
        throttle: ReadThrottle,
        stop: threading.Event,
        batch_bytes: int,
    ) -> None:
        self.path = path
        self._params = params
        self._open_file = open_file
        self._throttle = throttle
        self._stop = stop
        self._batch_bytes = batch_bytes
        self._lock = threading.Lock()
        self._fd = -1
        self._closed = False
        self.before: os.stat_result | None = None
        self._chunks: Iterator[Chunk] = iter(())
        self._total = 0
        self._delta = 0

    def _start(self) -> None:
        assert self._fd >= 0
        os.lseek(self._fd, 0, os.SEEK_SET)
        self.before = os.fstat(self._fd)
        if not stat.S_ISREG(self.before.st_mode):
            raise FileProblem("no longer a regular file")
        self._total = 0
        if self.before.st_size <= WHOLE_FILE_BYTES:
            self._chunks = iter(self._params.chunker().cut_buf(self._read_whole(self.before.st_size)))
        else:
            self._chunks = iter(self._params.chunker().cut_stream(self))

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
                self._start()
            chunks: list[tuple[bytes, bytes]] = []
            produced = 0
            for chunk in self._chunks:
                content = bytes(chunk.data)  # the stream chunker reuses its buffer
                chunks.append((chunk_id(self._params.key, content), content))
                produced += len(content)
                if produced >= self._batch_bytes:
                    return Step(chunks, self._take_delta(), done=False)
            assert self.before is not None
            after = os.fstat(self._fd)
            consistent = _snapshot(after) == _snapshot(self.before) and self._total == after.st_size
            return Step(chunks, self._take_delta(), done=True, consistent=consistent)

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
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
