"""Directory metadata of a restore: applied once a directory's whole subtree is written.

Directory modes and mtimes are applied after their whole subtree is written
(a read-only directory would otherwise block its own contents, and writing a
child changes the mtime), deepest first, so a restrictive parent mode never
blocks a child. A directory whose files may still sit in a batch being fetched
or written (or a large file the lane streams: numbered as a batch) waits
until every batch up to the last that may hold one of its files is done. SKIP leaves the metadata of a
directory that existed before alone; OVERWRITE re-applies it. The point root
(path "") gets no metadata: the destination root is the operator's choice.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
from dataclasses import dataclass, field

from strongroom.common.v1 import common_pb2

from strongroom_agent.jobs import FileError
from strongroom_agent.restore.destination import Destination, EntryProblem


@dataclass(order=True)
class PendingDir:
    key: bytes  # path + "/": the entries below the directory sort right after it
    parts: list[str] = field(compare=False)
    entry: common_pb2.FileEntry = field(compare=False)


class DirectoryMetadata:
    """Directories waiting for their metadata, in walk order, each until the batch holding its last file is done."""

    def __init__(self, dest: Destination, errors: list[FileError]) -> None:
        self._dest = dest
        self._errors = errors
        self._pending: list[PendingDir] = []
        # Directories whose subtree the walk has passed, waiting for the batch that holds their last file.
        self._deferred: collections.deque[tuple[int, PendingDir]] = collections.deque()
        self._done_seq = -1  # every batch up to this one is written and accounted
        self._done: set[int] = set()  # batches done after one that is not yet
        # One application at a time, in order (the walk and the large-file lane both apply).
        self._applying = asyncio.Lock()

    def add(self, parts: list[str], entry: common_pb2.FileEntry) -> None:
        heapq.heappush(self._pending, PendingDir(entry.path.encode() + b"/", parts, entry))

    def due(self, path: bytes) -> bool:
        """Some pending directory's subtree ends before ``path`` (``finish_before`` has work to do)."""
        if not self._pending:
            return False
        key = self._pending[0].key
        return path > key and not path.startswith(key)

    async def finish_before(self, path: bytes | None, needed: int) -> None:
        """Apply metadata of the pending directories whose subtree ends before ``path`` (all when None).

        ``needed``: the last batch that may hold a file below them; they wait
        until it is done.
        """
        ready: list[PendingDir] = []
        while self._pending and (
            path is None or (path > self._pending[0].key and not path.startswith(self._pending[0].key))
        ):
            ready.append(heapq.heappop(self._pending))
        if not ready:
            return
        # Deepest first, so a restrictive parent mode never blocks a child.
        for pending in sorted(ready, reverse=True):
            self._deferred.append((needed, pending))
        await self._apply_deferred()

    async def batch_done(self, seq: int) -> None:
        """Batch ``seq`` is written (batches finish in any order): apply the metadata that waited for it."""
        self._done.add(seq)
        while self._done_seq + 1 in self._done:
            self._done_seq += 1
            self._done.discard(self._done_seq)
        await self._apply_deferred()

    async def _apply_deferred(self) -> None:
        async with self._applying:  # in the order they were deferred: deepest first
            ready: list[PendingDir] = []
            while self._deferred and self._deferred[0][0] <= self._done_seq:
                ready.append(self._deferred.popleft()[1])
            if ready:
                # One worker-thread call for all of them: a thread hop per directory cost more than
                # the work while the writer threads held the GIL.
                self._errors.extend(await asyncio.to_thread(self._finish, ready))

    def _finish(self, ready: list[PendingDir]) -> list[FileError]:
        """Apply the metadata of ``ready`` in order (in a worker thread); the failures."""
        errors = []
        for pending in ready:
            try:
                self._dest.finish_dir(pending.parts, pending.entry)
            except (EntryProblem, OSError) as exc:
                errors.append(FileError(pending.entry.path, f"cannot set directory metadata: {exc}"))
        return errors
