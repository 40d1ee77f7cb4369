"""The end of a point's backup: entries in scan order to a spool, then ``CommitPoint``.

Manifest entries are spooled to a temporary file as files finish, in scan
order (``SpoolWriter`` waits for each file's read in turn); once every chunk
of the point has been uploaded the spool is streamed to ``CommitPoint`` in
batches.

Forever incremental (ADR 0014): with a state directory, the new cache file
(``cache.py``) is written alongside the spool. When the gateway accepts a base
point (``RunBackup.accepts_base_point``), only new or changed entries and the
paths deleted since the cached point are sent and the gateway synthesizes the
complete manifest; otherwise (or when it refuses the base) the complete point
is sent from the new cache file (``CacheSource``). If even that is refused
while cached chunks were reused, ``BaseRefused`` asks the job to back the
point up again without the cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO, Protocol

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2

from strongroom_agent import cache
from strongroom_agent.backup.compare import Known
from strongroom_agent.backup.context import JobContext
from strongroom_agent.backup.read import FileOutcome
from strongroom_agent.backup.stages import END, End
from strongroom_agent.gateway_client import GatewayError

log = logging.getLogger(__name__)


class Spool:
    """What a point sends to CommitPoint, on local disk in order: (kind, length, bytes) records.

    Kind ``E``: a serialized FileEntry; kind ``D``: a deleted path (delta commits only).
    """

    def __init__(self, directory: str | None) -> None:
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        # Closed by close(); unlinked on creation, so nothing is left behind on a crash.
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=directory or None)  # noqa: SIM115
        self.count = 0

    def write(self, entry: common_pb2.FileEntry) -> None:
        data = entry.SerializeToString()
        self._file.write(b"E" + struct.pack(">I", len(data)))
        self._file.write(data)
        self.count += 1

    def write_records(self, records: bytes, entries: int) -> None:
        """Append records already in this layout (``compare.Known.spool``), ``entries`` of them FileEntries."""
        self._file.write(records)
        self.count += entries

    def write_deleted(self, path: bytes) -> None:
        self._file.write(b"D" + struct.pack(">I", len(path)))
        self._file.write(path)

    def rewind(self) -> None:
        self._file.flush()
        self._file.seek(0)

    def read_batch(self, max_entries: int, max_bytes: int) -> tuple[list[common_pb2.FileEntry], list[str]]:
        batch: list[common_pb2.FileEntry] = []
        deleted: list[str] = []
        total = 0
        while len(batch) + len(deleted) < max_entries and total < max_bytes:
            header = self._file.read(5)
            if len(header) < 5:
                break
            (length,) = struct.unpack(">I", header[1:])
            data = self._file.read(length)
            if header[:1] == b"D":
                deleted.append(data.decode())
            else:
                entry = common_pb2.FileEntry()
                entry.ParseFromString(data)
                batch.append(entry)
            total += length
        return batch, deleted

    def close(self) -> None:
        self._file.close()


@dataclass
class Slot:
    """One scanned item in manifest order: its outcome (or the future of a file being read) and its cache record."""

    path: bytes
    value: FileOutcome | asyncio.Future[FileOutcome | None] | None
    cached: cache.CacheRecord | None


class SpoolWriter:
    """The ordering stage: records each scanned item in scan order in the spool and the new cache.

    ``put`` queues an item (bounded by ``ordered_queue``); the writer waits for
    a queued file's read before recording it. While the writer is ``idle`` an
    item whose outcome is known is ``record``ed at once, skipping the queue.
    """

    def __init__(self, spool: Spool, writer: cache.CacheWriter | None, bound: int) -> None:
        self._spool = spool
        self._writer = writer
        self._queue: asyncio.Queue[Slot | Known | End] = asyncio.Queue(bound)
        # Items queued that the writer has not finished yet.
        self._unwritten = 0

    def full(self) -> bool:
        return self._queue.full()

    def depth(self) -> int:
        return self._queue.qsize()

    async def put(self, item: Slot | Known) -> None:
        self._unwritten += 1
        await self._queue.put(item)

    def idle(self) -> bool:
        """Nothing is queued or being written: an item whose outcome is known may be recorded at once."""
        return self._unwritten == 0

    async def close(self) -> None:
        await self._queue.put(END)

    async def run(self) -> None:
        while (item := await self._queue.get()) is not END:
            try:
                await self._write(item)
            finally:
                self._unwritten -= 1

    async def _write(self, item: Slot | Known) -> None:
        """Record one queued item, waiting for its file's read first (called in scan order)."""
        if isinstance(item, Slot) and isinstance(item.value, asyncio.Future):
            value = await item.value
            self.record(Slot(item.path, value, item.cached))
        else:
            self.record(item)

    def record(self, item: Slot | Known) -> None:
        """Record an item whose outcome is known in the spool and the new cache (in scan order)."""
        if isinstance(item, Known):
            if item.spool:
                self._spool.write_records(item.spool, item.spool_entries)
            if self._writer is not None and item.cache_count:
                self._writer.add_records(item.cache_records, item.cache_count, item.first, item.last)
            return
        if item.value is None:  # failed or vanished: not part of the point
            if item.cached is not None:
                self._spool.write_deleted(item.path)
            return
        assert not isinstance(item.value, asyncio.Future)
        entry, st = item.value
        if self._writer is not None:
            self._writer.add(entry, st)
        if item.cached is None or item.cached.entry != entry:
            self._spool.write(entry)


class BaseRefused(Exception):
    """The commit referenced cached chunks the gateway does not hold: back up again without the cache."""


class _BatchSource(Protocol):
    def read_batch(self, max_entries: int, max_bytes: int) -> tuple[list[common_pb2.FileEntry], list[str]]: ...

    def close(self) -> None: ...


class CacheSource:
    """The complete point, read back from the new cache file."""

    def __init__(self, entries: cache.CacheEntries) -> None:
        self._entries = entries

    def read_batch(self, max_entries: int, max_bytes: int) -> tuple[list[common_pb2.FileEntry], list[str]]:
        return self._entries.read_batch(max_entries, max_bytes), []

    def close(self) -> None:
        self._entries.close()


class Committer:
    """Commits one point: the delta against the cached base point when it can, else the complete point."""

    def __init__(
        self,
        ctx: JobContext,
        filesystem: common_pb2.Filesystem,
        spool: Spool,
        cursor: cache.CacheCursor | None,
        writer: cache.CacheWriter | None,
    ) -> None:
        self._ctx = ctx
        self._filesystem = filesystem
        self._spool = spool
        self._cursor = cursor
        self._writer = writer

    async def commit(self) -> gateway_pb2.CommitPointResponse:
        ctx = self._ctx
        if self._cursor is None:
            return await self._send(self._spool_source, "")
        base = self._cursor.info.point_id
        if ctx.accepts_base_point and not self._cursor.broken:
            try:
                return await self._send(self._spool_source, base)
            except GatewayError as exc:
                if exc.code != "FAILED_PRECONDITION":
                    raise
                log.warning(
                    "job %s: the gateway refused base point %s (%s); sending the full point", ctx.job_id, base, exc
                )
        try:
            return await self._send(self._cache_source, "")
        except GatewayError as exc:
            if exc.code == "FAILED_PRECONDITION" and ctx.stats.files_unchanged:
                raise BaseRefused(str(exc)) from exc
            raise

    def _spool_source(self) -> _BatchSource:
        self._spool.rewind()
        return self._spool

    def _cache_source(self) -> _BatchSource:
        assert self._writer is not None
        return CacheSource(self._writer.entries())

    async def _send(
        self, open_source: Callable[[], _BatchSource], base_point_id: str
    ) -> gateway_pb2.CommitPointResponse:
        ctx = self._ctx
        header = gateway_pb2.PointHeader(job_id=ctx.job_id, filesystem=self._filesystem)
        if base_point_id:
            assert self._writer is not None
            header.base_point_id = base_point_id
            header.entry_count = self._writer.count

        async def attempt() -> gateway_pb2.CommitPointResponse:
            source = await asyncio.to_thread(open_source)

            async def requests() -> AsyncIterator[gateway_pb2.CommitPointRequest]:
                yield gateway_pb2.CommitPointRequest(header=header)
                while True:
                    entries, deleted = await asyncio.to_thread(
                        source.read_batch, ctx.limits.commit_batch_entries, ctx.limits.commit_batch_bytes
                    )
                    if not entries and not deleted:
                        return
                    batch = gateway_pb2.EntryBatch(entries=entries, deleted_paths=deleted)
                    yield gateway_pb2.CommitPointRequest(entries=batch)

            try:
                return await ctx.client.commit_point(requests())
            finally:
                if source is not self._spool:
                    source.close()

        return await ctx.retry.call("CommitPoint", attempt)
