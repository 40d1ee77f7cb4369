"""The backup pipeline: scan → read+chunk+hash → dedup → compress → upload → commit.

Stages are joined by bounded ``asyncio.Queue``s and a byte budget on chunk
content held in memory, so memory stays bounded whatever the number or size
of files. CPU work (FastCDC, BLAKE3, zstd) and file reads run in a per-job
thread pool of ``max_cores`` threads; the event loop only moves data.

Ordering: the gateway wants the entries of a point sorted by the UTF-8 bytes
of their paths. Within a directory, children are visited by name, and the
subtree of a child directory ``d`` is visited where the string ``d/`` sorts
among its siblings (so ``a``, ``a-c``, ``a/b`` come out in that order). Files
are read concurrently but their entries are emitted in scan order.

Manifest entries are spooled to a temporary file as files finish; once every
chunk of the point has been uploaded the spool is streamed to ``CommitPoint``
in batches.

Forever incremental (ADR 0014): with a state directory, the cache of the
root's last committed point (``cache.py``) is walked in step with the scan.
A regular file whose (dev, inode, size, mtime, ctime) is unchanged is not
read; its cached chunk ids are reused. When the gateway accepts a base point
(``RunBackup.accepts_base_point``), only new or changed entries and the paths
deleted since the cached point are sent and the gateway synthesizes the
complete manifest; otherwise (or when it refuses the base) the complete point
is sent from the new cache file. The new cache replaces the old one only
after the gateway confirmed the commit.

Gateway calls are retried (``jobs.RetryPolicy``); the job's lifecycle,
progress and outcome are ``jobs.run_job``'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import stat
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2

from strongroom_agent import cache
from strongroom_agent.backup.read import (
    CHANGED_WHILE_READ,
    FileProblem,
    FileReader,
    OpenFile,
    SmallRead,
    open_for_backup,
    read_problem,
)
from strongroom_agent.backup.scan import ScanItem, file_entry, plan_points, scan_point
from strongroom_agent.chunking import ChunkParams, InvalidRepositoryParameters, compress
from strongroom_agent.exclusions import Exclusions
from strongroom_agent.gateway_client import GatewayClient, GatewayError
from strongroom_agent.jobs import FileError, JobCanceled, ProgressCallback, RetryPolicy, job_finished, reason, run_job
from strongroom_agent.throttle import ReadThrottle, make_throttle

__all__ = [
    "FileError",
    "JobCanceled",
    "PipelineLimits",
    "RetryPolicy",
    "Upload",
    "cores_for",
    "open_for_backup",
    "plan_points",
    "run_backup",
    "scan_point",
    "upload_requests",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
JobStatus = common_pb2.JobStatus

READERS_PER_WORKER = 1
_DEFAULT_CORES = {common_pb2.BACKUP_PRIORITY_LOW: 1, common_pb2.BACKUP_PRIORITY_HIGH: 2}


@dataclass(frozen=True)
class PipelineLimits:
    """Sizes of the bounded stages (defaults suit production; tests shrink them)."""

    # Chunk content between read and upload. 64 MiB keeps both uploaders busy with a batch each
    # plus read-ahead; 256 MiB was no faster on the benchmark tree and peaked 200 MB higher.
    memory_budget_bytes: int = 64 << 20
    read_batch_bytes: int = 8 << 20  # chunk content produced per worker-thread step
    # Changed files up to small_file_bytes are read in groups, one worker-thread hop per group
    # (at most small_batch_files files or small_batch_bytes bytes): per-file hand-offs between
    # the event loop and the threads, not reading, dominated trees of small files.
    small_file_bytes: int = 1 << 20
    small_batch_files: int = 128
    small_batch_bytes: int = 4 << 20
    ordered_queue: int = 1024  # files in flight between scan and spool
    chunk_queue: int = 4096
    dedup_batch_ids: int = 1000
    compress_batch_bytes: int = 8 << 20
    upload_batch_chunks: int = 256
    upload_batch_bytes: int = 16 << 20
    upload_message_bytes: int = 4 << 20  # chunk payload per UploadChunks message (a chunk larger goes alone)
    uploaders: int = 2
    commit_batch_entries: int = 1000
    commit_batch_bytes: int = 1 << 20
    seen_ids: int = 200_000  # chunk ids remembered per job to skip repeat dedup queries
    # A file whose ctime is less than this before the scan started is "racy": it is
    # cached untrusted and read again next time (timestamps are coarser than writes).
    racy_window_ns: int = 2_000_000_000


def cores_for(command: gateway_pb2.RunBackup) -> int:
    """Worker threads for a job: max_cores, or the priority's default (seed: low 1, high 2)."""
    cores = command.max_cores or _DEFAULT_CORES.get(command.priority, 1)
    return max(1, min(cores, os.cpu_count() or 1))


def _pin_thread(cpus: frozenset[int]) -> None:
    # Best effort: not every platform or container allows changing affinity.
    setaffinity = getattr(os, "sched_setaffinity", None)
    if setaffinity is not None and cpus:
        with contextlib.suppress(OSError):
            setaffinity(0, cpus)


def job_executor(cores: int) -> ThreadPoolExecutor:
    """``cores`` worker threads, each pinned to the last ``cores`` CPUs the process may use."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    allowed = sorted(getaffinity(0)) if getaffinity is not None else []
    cpus = frozenset(allowed[-cores:]) if len(allowed) > cores else frozenset()
    return ThreadPoolExecutor(
        max_workers=cores, thread_name_prefix="strongroom-backup", initializer=_pin_thread, initargs=(cpus,)
    )


# --- pipeline -------------------------------------------------------------------------------------------------------


class _ByteBudget:
    """Bounds the chunk content held between reading and upload.

    Grants are first come, first served. ``release`` is synchronous and the
    uncontended ``acquire`` does not suspend: both run once per chunk, and a
    Condition round trip each time was a measurable share of the event loop.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, nbytes: int) -> int:
        """Wait until ``nbytes`` (at most the capacity) fit; the charge to release later."""
        charge = min(nbytes, self.capacity)
        if not self._waiters and self._used + charge <= self.capacity:
            self._used += charge
            return charge
        granted = asyncio.get_running_loop().create_future()
        self._waiters.append((charge, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(charge)  # granted just as it was cancelled: give it back
            else:
                granted.cancel()  # _grant skips it
                self._grant()
            raise
        return charge

    def release(self, charge: int) -> None:
        self._used -= charge
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            charge, granted = self._waiters[0]
            if granted.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if self._used + charge > self.capacity:
                return
            self._waiters.popleft()
            self._used += charge
            granted.set_result(None)


class _SeenIds:
    """Chunk ids known to be in the repository or on their way there (bounded, oldest forgotten first)."""

    def __init__(self, capacity: int) -> None:
        self._ids: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity

    def __contains__(self, chunk: bytes) -> bool:
        return chunk in self._ids

    def add(self, chunk: bytes) -> None:
        self._ids[chunk] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


@dataclass
class _Chunk:
    id: bytes
    content: bytes
    charge: int  # bytes held in the budget


@dataclass
class Upload:
    """A chunk ready to upload: ``payload`` is its content encoded as ``compression``.

    ``charge`` is what it holds of the memory budget until the upload returns.
    """

    id: bytes
    raw_length: int
    compression: gateway_pb2.ChunkCompression.ValueType
    payload: bytes
    charge: int


_END: Any = object()
_UNCHANGED: Any = object()  # _Slot.value of a file whose cache record stands as it is


async def _take_batch(
    queue: asyncio.Queue[Any], max_items: int, max_bytes: int, size: Callable[[Any], int]
) -> list[Any]:
    """Wait for one item, then take whatever else is ready (never waiting for more).

    Stops after the end marker, which is included as the last element.
    """
    first = await queue.get()
    batch = [first]
    total = 0 if first is _END else size(first)
    while first is not _END and len(batch) < max_items and total < max_bytes and not queue.empty():
        item = queue.get_nowait()
        batch.append(item)
        if item is _END:
            break
        total += size(item)
    return batch


def upload_requests(job_id: str, uploads: Sequence[Upload], message_bytes: int) -> list[gateway_pb2.UploadChunkRequest]:
    """The messages of one UploadChunks call: many chunks per message, each message about ``message_bytes``.

    One message per chunk made the gRPC machinery, not the data, most of the
    upload's CPU on both sides for trees of small files (ADR 0020).
    """
    requests: list[gateway_pb2.UploadChunkRequest] = []
    current: list[gateway_pb2.UploadedChunk] = []
    size = 0
    for u in uploads:
        if current and size + len(u.payload) > message_bytes:
            requests.append(gateway_pb2.UploadChunkRequest(job_id=job_id, chunks=current))
            current, size = [], 0
        current.append(
            gateway_pb2.UploadedChunk(
                chunk_id=u.id, compression=u.compression, raw_length=u.raw_length, payload=u.payload
            )
        )
        size += len(u.payload)
    if current:
        requests.append(gateway_pb2.UploadChunkRequest(job_id=job_id, chunks=current))
    return requests


def _compress_all(chunks: list[_Chunk]) -> list[Upload]:
    uploads = []
    for chunk in chunks:
        compression, payload = compress(chunk.content)
        uploads.append(Upload(chunk.id, len(chunk.content), compression, payload, chunk.charge))
    return uploads


class _Spool:
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
class _JobContext:
    job_id: str
    client: GatewayClient
    params: ChunkParams
    exclusions: Exclusions
    executor: ThreadPoolExecutor
    workers: int
    throttle: ReadThrottle
    open_file: OpenFile
    limits: PipelineLimits
    spool_dir: str | None
    cancel: asyncio.Event
    stop_threads: threading.Event
    stats: common_pb2.JobStats
    errors: list[FileError]
    seen: _SeenIds
    retry: RetryPolicy
    state_dir: str | None  # where the forever-incremental cache lives (None: no cache)
    accepts_base_point: bool


@dataclass
class _Gone:
    """A path of the cached point that the scan did not find (deleted since)."""

    path: bytes


@dataclass
class _Slot:
    """One scanned item in manifest order: its entry (or the task reading it) and its cache record."""

    path: bytes
    value: Any  # (FileEntry, stat) | a future of (FileEntry, stat) | None | _UNCHANGED
    cached: cache.CacheRecord | None


class _BaseRefused(Exception):
    """The commit referenced cached chunks the gateway does not hold: back up again without the cache."""


class _PointRun:
    """Backs up one point: every stage runs as a task of one TaskGroup."""

    def __init__(self, ctx: _JobContext, filesystem: common_pb2.Filesystem, *, use_cache: bool = True) -> None:
        self.ctx = ctx
        self.filesystem = filesystem
        limits = ctx.limits
        self.budget = _ByteBudget(limits.memory_budget_bytes)
        self.ordered: asyncio.Queue[Any] = asyncio.Queue(limits.ordered_queue)
        # Items put on ``ordered`` that the spool writer has not finished yet (see _scan).
        self.unwritten = 0
        self.chunks: asyncio.Queue[Any] = asyncio.Queue(limits.chunk_queue)
        self.to_compress: asyncio.Queue[Any] = asyncio.Queue(limits.chunk_queue)
        self.to_upload: asyncio.Queue[Any] = asyncio.Queue(limits.upload_batch_chunks * 2)
        # One file in flight per worker thread. More (8 per thread) made an unthrottled tree of
        # small files 10% faster, but under a read throttle every file then finishes late and
        # uploads come in bursts, which delays progress and resumable state (tests/e2e/test_resume.py).
        self.readers = asyncio.Semaphore(ctx.workers * READERS_PER_WORKER)
        self.spool = _Spool(ctx.spool_dir)
        # Changed small files scanned but not yet handed to a worker thread (see _add_small).
        self.small: list[tuple[ScanItem, asyncio.Future[tuple[common_pb2.FileEntry, os.stat_result] | None]]] = []
        self.small_bytes = 0
        self.use_cache = use_cache
        self.cursor: cache.CacheCursor | None = None
        self.writer: cache.CacheWriter | None = None

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.ctx.executor, fn)

    async def _open_cache(self) -> None:
        ctx = self.ctx
        if ctx.state_dir is None:
            return
        mount = self.filesystem.mount_point
        state_dir = ctx.state_dir
        if self.use_cache:
            info = await asyncio.to_thread(cache.load, state_dir, ctx.params, mount)
            if info is not None:
                log.info(
                    "job %s: %s incremental from point %s (%d entries)", ctx.job_id, mount, info.point_id, info.count
                )
                self.cursor = await asyncio.to_thread(cache.CacheCursor, info)
        racy_before = time.time_ns() - ctx.limits.racy_window_ns
        self.writer = await asyncio.to_thread(
            functools.partial(cache.CacheWriter, state_dir, ctx.params, mount, racy_before_ns=racy_before)
        )

    async def run(self) -> gateway_pb2.CommitPointResponse:
        started = time.perf_counter()
        try:
            await self._open_cache()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._scan(group))
                writer = group.create_task(self._write_spool())
                dedup = group.create_task(self._dedup())
                compressors = [group.create_task(self._compress()) for _ in range(self.ctx.workers)]
                uploaders = [group.create_task(self._upload()) for _ in range(self.ctx.limits.uploaders)]
                # Shut the stages down in order once each upstream stage is done.
                await writer
                await self.chunks.put(_END)
                await dedup
                for _ in compressors:
                    await self.to_compress.put(_END)
                await asyncio.gather(*compressors)
                for _ in uploaders:
                    await self.to_upload.put(_END)
            uploaded = time.perf_counter()
            response = await self._commit()
            log.info(
                "job %s: %s scanned, read and uploaded in %.2f s, committed in %.2f s (%d entries sent)",
                self.ctx.job_id,
                self.filesystem.mount_point,
                uploaded - started,
                time.perf_counter() - uploaded,
                self.spool.count,
            )
            if self.writer is not None:
                await asyncio.to_thread(self.writer.commit, response.point_id)
                self.writer = None
            return response
        finally:
            self.spool.close()
            if self.cursor is not None:
                self.cursor.close()
            if self.writer is not None:
                self.writer.discard()

    async def _scan(self, group: asyncio.TaskGroup) -> None:
        ctx = self.ctx
        root = self.filesystem.mount_point
        cursor = self.cursor
        try:
            async for item in scan_point(root, ctx.exclusions, ctx.errors, ctx.cancel):
                path = item.rel.encode()
                cached = None
                if cursor is not None:
                    while (record := await cursor.peek()) is not None and record.path < path:
                        await self._put_known(group, _Gone(cursor.take().path))
                    if record is not None and record.path == path:
                        cached = cursor.take()
                ctx.stats.files_scanned += 1
                if stat.S_ISREG(item.st.st_mode):
                    ctx.stats.bytes_scanned += item.st.st_size
                    if cached is not None and cached.unchanged(item.st):
                        # Same inode, size, mtime and ctime: mode and owner are unchanged too (they
                        # move ctime), so the cached entry is this file's entry as it stands.
                        ctx.stats.files_unchanged += 1
                        ctx.stats.bytes_unchanged += item.st.st_size
                        await self._put_known(group, _Slot(path, _UNCHANGED, cached))
                        continue
                    if item.st.st_size <= ctx.limits.small_file_bytes:
                        await self._add_small(group, item, path, cached)
                        continue
                    await self.readers.acquire()
                    await self._put_ordered(group, _Slot(path, group.create_task(self._file_entry(item)), cached))
                else:
                    await self._put_known(group, _Slot(path, (file_entry(item), item.st), cached))
        except FileNotFoundError:
            ctx.errors.append(FileError(root, "backup root vanished"))
        except OSError as exc:
            ctx.errors.append(FileError(root, reason(exc)))
        await self._flush_small(group)
        if cursor is not None:
            while await cursor.peek() is not None:
                await self._put_known(group, _Gone(cursor.take().path))
        await self.ordered.put(_END)

    async def _put_ordered(self, group: asyncio.TaskGroup, item: _Slot | _Gone) -> None:
        """Queue ``item`` for the spool writer, first starting the pending small-file group if the queue is full.

        The writer waits for slots in order; a slot of a group that is not yet
        started must never be stuck behind a full queue.
        """
        if self.ordered.full():
            await self._flush_small(group)
        self.unwritten += 1
        await self.ordered.put(item)

    async def _add_small(
        self, group: asyncio.TaskGroup, item: ScanItem, path: bytes, cached: cache.CacheRecord | None
    ) -> None:
        """Add a changed small file to the pending group; start the group when it is full."""
        future: asyncio.Future[tuple[common_pb2.FileEntry, os.stat_result] | None]
        future = asyncio.get_running_loop().create_future()
        await self._put_ordered(group, _Slot(path, future, cached))
        self.small.append((item, future))
        self.small_bytes += item.st.st_size
        limits = self.ctx.limits
        if len(self.small) >= limits.small_batch_files or self.small_bytes >= limits.small_batch_bytes:
            await self._flush_small(group)

    async def _flush_small(self, group: asyncio.TaskGroup) -> None:
        if self.small:
            await self.readers.acquire()
            group.create_task(self._small_group(self.small))
            self.small, self.small_bytes = [], 0

    async def _write_spool(self) -> None:
        while (item := await self.ordered.get()) is not _END:
            try:
                await self._write_slot(item)
            finally:
                self.unwritten -= 1

    async def _write_slot(self, item: _Slot | _Gone) -> None:
        """Record one queued item, waiting for its file's read first (called in scan order)."""
        if isinstance(item, _Slot) and isinstance(item.value, asyncio.Future):
            value = await item.value
            self._record(_Slot(item.path, value, item.cached))
        else:
            self._record(item)

    def _record(self, item: _Slot | _Gone) -> None:
        """Record an item whose outcome is known in the spool and the new cache (in scan order)."""
        if isinstance(item, _Gone):
            self.spool.write_deleted(item.path)
            return
        if item.value is _UNCHANGED:
            assert item.cached is not None
            if self.writer is not None:
                self.writer.add_unchanged(item.cached)
            return
        if item.value is None:  # failed or vanished: not part of the point
            if item.cached is not None:
                self.spool.write_deleted(item.path)
            return
        entry, st = item.value
        if self.writer is not None:
            self.writer.add(entry, st)
        if item.cached is None or item.cached.entry != entry:
            self.spool.write(entry)

    async def _put_known(self, group: asyncio.TaskGroup, item: _Slot | _Gone) -> None:
        """Queue an item whose outcome is known, or record it at once when nothing is queued ahead of it.

        Most items of a daily backup (unchanged files, directories) take the
        direct path and skip the queue round trip.
        """
        if self.unwritten == 0:
            self._record(item)
        else:
            await self._put_ordered(group, item)

    def _reader(self, item: ScanItem) -> FileReader:
        ctx = self.ctx
        return FileReader(
            item.path, ctx.params, ctx.open_file, ctx.throttle, ctx.stop_threads, ctx.limits.read_batch_bytes
        )

    async def _file_entry(self, item: ScanItem) -> tuple[common_pb2.FileEntry, os.stat_result] | None:
        """Read one file (holding a reader permit, released at the end); None if it failed (reported)."""
        try:
            return await self._read_alone(item)
        finally:
            self.readers.release()

    async def _read_alone(self, item: ScanItem) -> tuple[common_pb2.FileEntry, os.stat_result] | None:
        ctx = self.ctx
        reader = self._reader(item)
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
        on its own afterwards.
        """
        results = []
        for item in items:
            result = SmallRead()
            reader = self._reader(item)
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
                        result.chunks, result.before = step.chunks, reader.before
                        # Built here, in the worker thread: less per-file work on the event loop.
                        result.entry = file_entry(item, reader.before)
                        result.entry.chunk_ids.extend(cid for cid, _ in step.chunks)
                        break
                else:
                    result.problem = CHANGED_WHILE_READ
            except (FileProblem, OSError) as exc:
                result.problem = read_problem(exc)
            finally:
                reader.close()
            results.append(result)
        return results

    async def _small_group(
        self, files: list[tuple[ScanItem, asyncio.Future[tuple[common_pb2.FileEntry, os.stat_result] | None]]]
    ) -> None:
        """Read a group of small files in one worker-thread hop and settle each file's slot."""
        ctx = self.ctx
        try:
            results = await self._in_thread(functools.partial(self._read_small_files, [item for item, _ in files]))
            for (item, future), result in zip(files, results, strict=True):
                ctx.stats.bytes_read += result.bytes_read
                if result.too_big:
                    future.set_result(await self._read_alone(item))
                    continue
                if result.problem:
                    ctx.errors.append(FileError(item.path, result.problem))
                    future.set_result(None)
                    continue
                assert result.before is not None and result.entry is not None
                await self._to_dedup(result.chunks)
                ctx.stats.files_read += 1
                future.set_result((result.entry, result.before))
        finally:
            for _, future in files:
                future.cancel()  # no-op for settled slots; the job is failing otherwise
            self.readers.release()

    async def _to_dedup(self, chunks: list[tuple[bytes, bytes]]) -> list[bytes]:
        """Hand read chunks to the dedup stage (within the memory budget); their ids, in order.

        The chunks of a step or small file (at most a read batch) are charged in one
        acquire when they fit the budget together, each chunk then holding its own share.
        """
        total = sum(len(content) for _, content in chunks)
        if 0 < total <= self.budget.capacity:
            await self.budget.acquire(total)
            for cid, content in chunks:
                await self.chunks.put(_Chunk(cid, content, len(content)))
        else:
            for cid, content in chunks:
                charge = await self.budget.acquire(len(content))
                await self.chunks.put(_Chunk(cid, content, charge))
        return [cid for cid, _ in chunks]

    async def _read_file(self, reader: FileReader, item: ScanItem) -> tuple[common_pb2.FileEntry, os.stat_result]:
        ctx = self.ctx
        for attempt in range(2):
            if attempt:
                await self._in_thread(reader.restart)
            ids: list[bytes] = []
            while True:
                if ctx.cancel.is_set():
                    raise JobCanceled
                step = await self._in_thread(reader.step)
                ctx.stats.bytes_read += step.bytes_read
                ids.extend(await self._to_dedup(step.chunks))
                if step.done:
                    break
            if step.consistent:
                assert reader.before is not None
                entry = file_entry(item, reader.before)
                entry.chunk_ids.extend(ids)
                return entry, reader.before
        raise FileProblem(CHANGED_WHILE_READ)

    async def _dedup(self) -> None:
        ctx = self.ctx
        limits = ctx.limits
        done = False
        while not done:
            batch = await _take_batch(
                self.chunks, limits.dedup_batch_ids, limits.memory_budget_bytes // 4, lambda c: len(c.content)
            )
            if batch[-1] is _END:
                batch.pop()
                done = True
            query: dict[bytes, _Chunk] = {}
            for chunk in batch:
                if chunk.id in ctx.seen or chunk.id in query:
                    self.budget.release(chunk.charge)
                else:
                    query[chunk.id] = chunk
            if not query:
                continue
            find = functools.partial(ctx.client.find_missing_chunks, ctx.job_id, list(query))
            missing = set(await ctx.retry.call("FindMissingChunks", find))
            for cid, chunk in query.items():
                ctx.seen.add(cid)
                if cid in missing:
                    await self.to_compress.put(chunk)
                else:
                    self.budget.release(chunk.charge)

    async def _compress(self) -> None:
        limits = self.ctx.limits
        while True:
            batch = await _take_batch(self.to_compress, 1 << 30, limits.compress_batch_bytes, lambda c: len(c.content))
            end = batch[-1] is _END
            chunks: list[_Chunk] = batch[:-1] if end else batch
            if chunks:
                for upload in await self._in_thread(functools.partial(_compress_all, chunks)):
                    await self.to_upload.put(upload)
            if end:
                return

    async def _upload(self) -> None:
        ctx = self.ctx
        limits = ctx.limits
        while True:
            batch = await _take_batch(
                self.to_upload, limits.upload_batch_chunks, limits.upload_batch_bytes, lambda u: len(u.payload)
            )
            end = batch[-1] is _END
            uploads: list[Upload] = batch[:-1] if end else batch
            if uploads:
                requests = upload_requests(ctx.job_id, uploads, limits.upload_message_bytes)
                response = await ctx.retry.call("UploadChunks", functools.partial(ctx.client.upload_chunks, requests))
                ctx.stats.chunks_new += response.chunks_stored
                ctx.stats.bytes_uploaded += sum(len(u.payload) for u in uploads)
                for u in uploads:
                    self.budget.release(u.charge)
            if end:
                return

    async def _commit(self) -> gateway_pb2.CommitPointResponse:
        ctx = self.ctx
        if self.cursor is None:
            return await self._send(self._spool_source, "")
        base = self.cursor.info.point_id
        if ctx.accepts_base_point and not self.cursor.broken:
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
                raise _BaseRefused(str(exc)) from exc
            raise

    def _spool_source(self) -> _BatchSource:
        self.spool.rewind()
        return self.spool

    def _cache_source(self) -> _BatchSource:
        assert self.writer is not None
        return _CacheSource(self.writer.entries())

    async def _send(
        self, open_source: Callable[[], _BatchSource], base_point_id: str
    ) -> gateway_pb2.CommitPointResponse:
        ctx = self.ctx
        header = gateway_pb2.PointHeader(job_id=ctx.job_id, filesystem=self.filesystem)
        if base_point_id:
            assert self.writer is not None
            header.base_point_id = base_point_id
            header.entry_count = self.writer.count

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
                if source is not self.spool:
                    source.close()

        return await ctx.retry.call("CommitPoint", attempt)


class _BatchSource(Protocol):
    def read_batch(self, max_entries: int, max_bytes: int) -> tuple[list[common_pb2.FileEntry], list[str]]: ...

    def close(self) -> None: ...


class _CacheSource:
    """The complete point, read back from the new cache file."""

    def __init__(self, entries: cache.CacheEntries) -> None:
        self._entries = entries

    def read_batch(self, max_entries: int, max_bytes: int) -> tuple[list[common_pb2.FileEntry], list[str]]:
        return self._entries.read_batch(max_entries, max_bytes), []

    def close(self) -> None:
        self._entries.close()


# --- the job --------------------------------------------------------------------------------------------------------


async def run_backup(
    command: gateway_pb2.RunBackup,
    *,
    client: GatewayClient,
    points: Sequence[common_pb2.Filesystem],
    exclusions: Exclusions,
    cancel: asyncio.Event,
    point_errors: Sequence[FileError] = (),
    on_progress: ProgressCallback | None = None,
    progress_interval: float = 5.0,
    spool_dir: str | None = None,
    open_file: OpenFile = open_for_backup,
    throttle: ReadThrottle | None = None,
    limits: PipelineLimits | None = None,
    state_dir: str | None = None,
    retry: RetryPolicy | None = None,
) -> gateway_pb2.JobFinished:
    """Back up ``points`` one after another and commit each; never raises for job-level failures.

    Returns COMPLETE, PARTIAL_COMPLETE (some files or roots failed; see
    ``file_errors``), FAILED (the gateway or the parameters failed), or
    CANCELED (``cancel`` was set).
    """
    stats = common_pb2.JobStats()
    errors = list(point_errors)
    try:
        params = ChunkParams.from_proto(command.repository)
    except InvalidRepositoryParameters as exc:
        return job_finished(
            command.job_id, common_pb2.JOB_STATUS_FAILED, stats, errors, f"bad repository parameters: {exc}"
        )
    if not points:
        reason = "; ".join(str(e) for e in errors) or "no block-storage filesystem to back up"
        return job_finished(command.job_id, common_pb2.JOB_STATUS_FAILED, stats, errors, reason)

    workers = cores_for(command)
    executor = job_executor(workers)
    ctx = _JobContext(
        job_id=command.job_id,
        client=client,
        params=params,
        exclusions=exclusions,
        executor=executor,
        workers=workers,
        throttle=throttle or make_throttle(command.max_read_bytes_per_second),
        open_file=open_file,
        limits=limits or PipelineLimits(),
        spool_dir=spool_dir,
        cancel=cancel,
        stop_threads=threading.Event(),
        stats=stats,
        errors=errors,
        seen=_SeenIds((limits or PipelineLimits()).seen_ids),
        retry=retry or RetryPolicy(),
        state_dir=state_dir,
        accepts_base_point=command.accepts_base_point,
    )

    async def all_points() -> None:
        for filesystem in points:
            try:
                response = await _PointRun(ctx, filesystem).run()
            except _BaseRefused as exc:
                log.warning("job %s: cached chunks refused (%s); reading %s in full", command.job_id, exc, filesystem)
                response = await _PointRun(ctx, filesystem, use_cache=False).run()
            log.info("job %s: committed point %s of %s", command.job_id, response.point_id, filesystem.mount_point)

    async def stop_threads() -> None:
        ctx.stop_threads.set()
        executor.shutdown(wait=False)

    return await run_job(
        all_points(),
        job_id=command.job_id,
        cancel=cancel,
        stats=stats,
        errors=errors,
        on_progress=on_progress,
        progress_interval=progress_interval,
        finish=stop_threads,
    )
