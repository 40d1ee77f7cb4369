"""Writer threads: check and write the regular files of a fetched batch.

A batch's files are cut into contiguous runs (neighbours share directories);
each run is worked on in one thread of the job's writer pool, which keeps the
current parent directory open. Files in a directory this restore created are
not checked at all: the ``O_EXCL`` create is their check.
"""

from __future__ import annotations

import asyncio
import functools
import os
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from strongroom.common.v1 import common_pb2

from strongroom_agent.restore.content import Contents, ContentWriter
from strongroom_agent.restore.destination import Destination, DirWalker, EntryProblem

WRITE_THREADS = 3

# Each writer thread's decode buffer (``ContentWriter``): it lives as long as the job's writer pool.
_local = threading.local()


def _content_writer() -> ContentWriter:
    writer: ContentWriter | None = getattr(_local, "content", None)
    if writer is None:
        writer = _local.content = ContentWriter()
    return writer


@dataclass
class File:
    """A regular file of a batch and what became of it."""

    parts: list[str]
    entry: common_pb2.FileEntry
    ids: list[bytes]  # the entry's chunk ids, read out of the message once
    skipped: bool = False
    exists: bool = True  # until the check finds the name free (or it is in a directory this restore created)
    written: bool = False
    error: str | None = None
    new_dir: bool = False  # its directory was created by this restore (root's, 0700 until its metadata is set)


@dataclass
class Batch:
    seq: int
    files: list[File] = field(default_factory=list)
    content_bytes: int = 0
    ids: dict[bytes, None] = field(default_factory=dict)


class Writer:
    """Work on runs of a batch's files in a writer thread, keeping the current parent directory open."""

    def __init__(self, dest: Destination, stop: threading.Event) -> None:
        self.dest = dest
        self.stop = stop
        self._dirs = DirWalker(dest)
        self._key: list[str] | None = None
        self._fd = -1
        self._owner: tuple[int, int] | None = None  # of a file created in the current parent, when known

    def _parent(self, parts: list[str], new_dir: bool = False) -> int:
        key = parts[:-1]
        if key != self._key:
            self._key = None
            self._fd = self._dirs.open(key)
            self._key = key
            self._owner = self.dest.new_file_owner(self._fd) if new_dir and self.dest.as_root else None
        return self._fd

    def close(self) -> None:
        self._key = None
        self._dirs.close()

    def check(self, files: Sequence[File], overwrite: bool) -> None:
        """Mark files that already exist as skipped (SKIP) or in the way of a directory (OVERWRITE)."""
        try:
            for f in files:
                if self.stop.is_set():
                    return
                try:
                    st = os.stat(f.parts[-1], dir_fd=self._parent(f.parts), follow_symlinks=False)
                except FileNotFoundError:
                    f.exists = False
                    continue
                except EntryProblem as exc:
                    f.error = str(exc)
                    continue
                except OSError as exc:
                    f.error = exc.strerror or str(exc)
                    continue
                if not overwrite:
                    f.skipped = True
                elif stat.S_ISDIR(st.st_mode):
                    f.error = "a directory is in the way"
        finally:
            self.close()

    def write(self, files: Sequence[File], contents: Contents, overwrite: bool) -> None:
        """Write checked files; one whose name appeared since the check is skipped (SKIP) or replaced (OVERWRITE).

        A file that needs a chunk that was not sent, is damaged or declares
        another length is not written at all (nothing is created under its
        name); one whose chunk then does not inflate is removed again. Its
        error names the chunk and why.
        """
        content = _content_writer()
        try:
            for f in files:
                if self.stop.is_set():
                    return
                try:
                    chunks = contents.chunks_of(f.ids)
                except EntryProblem as exc:
                    f.error = str(exc)
                    continue
                size = sum(c.length for c in chunks)
                if size != f.entry.size:
                    f.error = f"content is {size} bytes, expected {f.entry.size}"
                    continue
                try:
                    pfd = self._parent(f.parts, f.new_dir)
                    entry = f.entry
                    owner = self._owner
                    # As root, a file that gets its owner and group at creation needs no fchown (nor fchmod).
                    owned = f.new_dir and owner is not None and owner == (entry.uid, entry.gid)
                    if self.dest.write_new(
                        pfd,
                        f.parts,
                        entry,
                        functools.partial(content.write, chunks=chunks),
                        fresh=not f.exists,
                        overwrite=overwrite,
                        owned=owned,
                    ):
                        f.written = True
                    else:
                        f.skipped = True
                except EntryProblem as exc:
                    f.error = str(exc)
                except OSError as exc:
                    f.error = exc.strerror or str(exc)
        finally:
            self.close()


def runs(files: list[File], count: int) -> list[list[File]]:
    """``files`` cut into at most ``count`` contiguous runs (neighbours share directories)."""
    size = max(1, -(-len(files) // count))
    return [files[i : i + size] for i in range(0, len(files), size)]


async def in_threads(
    pool: ThreadPoolExecutor,
    dest: Destination,
    stop: threading.Event,
    files: list[File],
    work: Callable[[Writer, list[File]], None],
) -> None:
    """Do ``work`` on runs of ``files`` in the writer threads, a ``Writer`` per run; wait for all of them."""
    loop = asyncio.get_running_loop()
    await asyncio.gather(
        *(loop.run_in_executor(pool, work, Writer(dest, stop), run) for run in runs(files, WRITE_THREADS * 2))
    )
