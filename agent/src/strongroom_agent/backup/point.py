"""One point's backup: scan → read+chunk+hash → dedup → compress → upload, then commit.

``PointRun`` opens the point's cache, builds the stages, runs them as tasks
of one ``TaskGroup`` and shuts them down in order once each upstream stage is
done: the spool writer (every read settled), dedup, the compressors, the
uploaders. Then it commits the point (``commit.py``) and, once the gateway
confirmed the commit, replaces the cache. The stages themselves live in
``scan.py`` (order), ``read.py`` (files), ``stages.py`` (chunks, memory) and
``commit.py`` (spool, commit).

Forever incremental (ADR 0014): the cache of the root's last committed point
is walked in step with the scan. A regular file whose (dev, inode, size,
mtime, ctime) is unchanged is not read; its cached chunk ids are reused.
Cached paths the scan passes without finding are deleted since.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2

from strongroom_agent import cache
from strongroom_agent.backup.commit import Committer, Slot, Spool, SpoolWriter
from strongroom_agent.backup.compare import Known, Step, TreeCompare
from strongroom_agent.backup.context import JobContext
from strongroom_agent.backup.native import NativeTreeCompare
from strongroom_agent.backup.probe import PipelineProbe
from strongroom_agent.backup.read import FileOutcome, Reader
from strongroom_agent.backup.scan import ScanItem
from strongroom_agent.backup.stages import ByteBudget, Compressor, Deduper, Uploader
from strongroom_agent.jobs import FileError, JobCanceled, reason

log = logging.getLogger(__name__)


class PointRun:
    """Backs up one point: wires the stages in one TaskGroup and commits."""

    def __init__(self, ctx: JobContext, filesystem: common_pb2.Filesystem, *, use_cache: bool = True) -> None:
        self.ctx = ctx
        self.filesystem = filesystem
        self.spool = Spool(ctx.spool_dir)
        self.use_cache = use_cache
        self.cursor: cache.CacheCursor | None = None
        self.writer: cache.CacheWriter | None = None

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
        # Wall-clock on purpose (not the injected Clock): it is compared with the files' ctimes.
        racy_before = time.time_ns() - ctx.limits.racy_window_ns
        self.writer = await asyncio.to_thread(
            functools.partial(cache.CacheWriter, state_dir, ctx.params, mount, racy_before_ns=racy_before)
        )

    async def run(self) -> gateway_pb2.CommitPointResponse:
        started = time.perf_counter()
        try:
            await self._open_cache()
            await self._run_stages()
            uploaded = time.perf_counter()
            response = await Committer(self.ctx, self.filesystem, self.spool, self.cursor, self.writer).commit()
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

    async def _run_stages(self) -> None:
        ctx = self.ctx
        limits = ctx.limits
        budget = ByteBudget(limits.memory_budget_bytes)
        wire = ByteBudget(limits.wire_budget_bytes)
        uploader = Uploader(
            job_id=ctx.job_id,
            client=ctx.client,
            retry=ctx.retry,
            wire=wire,
            stats=ctx.stats,
            limits=limits,
            freed=ctx.freed,
        )
        compressor = Compressor(
            job_id=ctx.job_id,
            executor=ctx.executor,
            workers=ctx.workers,
            limits=limits,
            budget=budget,
            wire=wire,
            out=uploader,
            freed=ctx.freed,
        )
        deduper = Deduper(
            job_id=ctx.job_id,
            client=ctx.client,
            retry=ctx.retry,
            seen=ctx.seen,
            budget=budget,
            limits=limits,
            out=compressor,
        )
        reader = Reader(ctx, budget, deduper)
        spool_writer = SpoolWriter(self.spool, self.writer, limits.ordered_queue)
        probe = None
        if ctx.trace is not None:
            gauges: dict[str, Callable[[], float]] = {
                "budget_used": lambda: budget.used,
                "budget_waiting": lambda: budget.waiting,
                "wire_used": lambda: wire.used,
                "wire_waiting": lambda: wire.waiting,
                "reading": reader.in_flight,
                "dedup_queue": deduper.depth,
                "compress_queue": compressor.depth,
                "compressing": lambda: compressor.in_flight,
                "upload_queue": uploader.depth,
                "uploading": lambda: uploader.in_flight,
                "spool_queue": spool_writer.depth,
            }
            # Wall-clock on purpose: the trace is lined up with the bench's /proc samples.
            probe = PipelineProbe(ctx.trace, gauges, anchor=time.time())
        async with asyncio.TaskGroup() as group:
            sampling = group.create_task(probe.run()) if probe is not None else None
            group.create_task(_Scan(ctx, self.filesystem, self.cursor, self.writer, reader, spool_writer).run(group))
            writing = group.create_task(spool_writer.run())
            dedup = group.create_task(deduper.run())
            compressors = [group.create_task(compressor.run()) for _ in range(compressor.workers)]
            uploaders = [group.create_task(uploader.run()) for _ in range(uploader.workers)]
            # Shut the stages down in order once each upstream stage is done.
            await writing
            await deduper.close()
            await dedup
            await compressor.close()
            await asyncio.gather(*compressors)
            await uploader.close()
            await asyncio.gather(*uploaders)
            if sampling is not None:
                sampling.cancel()
        if probe is not None:
            await probe.save()


class _Scan:
    """The scan stage: steps the walk against the cache (``compare.TreeCompare``) and routes what it found.

    Entries the walk settled (unchanged files, directories, symlinks, deleted
    paths) reach the spool writer as ``Known`` runs; changed files go to the
    reader, their slot (a future) queued in scan order. The next step of the
    walk runs in a worker thread while the loop routes the previous one.
    """

    def __init__(
        self,
        ctx: JobContext,
        filesystem: common_pb2.Filesystem,
        cursor: cache.CacheCursor | None,
        writer: cache.CacheWriter | None,
        reader: Reader,
        spool_writer: SpoolWriter,
    ) -> None:
        self.ctx = ctx
        self.root = filesystem.mount_point
        racy_before = writer.racy_before_ns if writer is not None else None
        python = TreeCompare(self.root, ctx.exclusions, cursor, racy_before)
        # One native call per step where it walks as the Python path does (ADR 0085).
        native = ctx.native.tree_compare(python) if ctx.native is not None else None
        self.compare: TreeCompare | NativeTreeCompare = native or python
        self.reader = reader
        self.spool_writer = spool_writer

    async def run(self, group: asyncio.TaskGroup) -> None:
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[Step] | None = loop.run_in_executor(None, self.compare.step)
        try:
            while pending is not None:
                try:
                    step = await pending
                except OSError as exc:  # the root could not be walked (only the first step lstat()s it)
                    vanished = isinstance(exc, FileNotFoundError)
                    ctx.errors.append(FileError(self.root, "backup root vanished" if vanished else reason(exc)))
                    # The cached paths are then deleted since, as those left at a walk's end are.
                    self.compare.end_walk()
                    pending = loop.run_in_executor(None, self.compare.step)
                    continue
                pending = None
                if ctx.cancel.is_set():
                    raise JobCanceled
                if not step.done:
                    pending = loop.run_in_executor(None, self.compare.step)
                await self._route(group, step)
        finally:
            if pending is not None and not pending.done():  # left early: the step running in a thread is dropped
                pending.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        await self.reader.flush(group)
        await self.spool_writer.close()

    async def _route(self, group: asyncio.TaskGroup, step: Step) -> None:
        """Route one step's items in scan order; settled runs take no event-loop step while the writer is idle."""
        ctx = self.ctx
        stats = ctx.stats
        ctx.errors.extend(step.errors)
        stats.files_scanned += step.files_scanned
        stats.bytes_scanned += step.bytes_scanned
        stats.files_unchanged += step.files_unchanged
        stats.bytes_unchanged += step.bytes_unchanged
        small_file_bytes = ctx.limits.small_file_bytes
        for found in step.items:
            if isinstance(found, Known):
                await self._put_known(group, found)
                continue
            item = found.item
            if item.st.st_size <= small_file_bytes:
                await self._add_small(group, item, found.path, found.cached)
            else:
                # No record for the path: a new file, whose chunks the native cutter compresses as it reads.
                task = await self.reader.read(group, item, new=found.cached is None)
                await self._put_ordered(group, Slot(found.path, task, found.cached))

    async def _put_ordered(self, group: asyncio.TaskGroup, item: Slot | Known) -> None:
        """Queue ``item`` for the spool writer, first starting the pending small-file group if the queue is full.

        The writer waits for slots in order; a slot of a group that is not yet
        started must never be stuck behind a full queue.
        """
        if self.spool_writer.full():
            await self.reader.flush(group)
        await self.spool_writer.put(item)

    async def _add_small(
        self, group: asyncio.TaskGroup, item: ScanItem, path: bytes, cached: cache.CacheRecord | None
    ) -> None:
        """Queue a changed small file's slot, then add the file to the reader's pending group."""
        future: asyncio.Future[FileOutcome | None] = asyncio.get_running_loop().create_future()
        await self._put_ordered(group, Slot(path, future, cached))
        await self.reader.add_small(group, item, future)

    async def _put_known(self, group: asyncio.TaskGroup, item: Known) -> None:
        """Record a settled run when nothing is queued ahead of it, else queue it.

        Most runs of a daily backup (unchanged files, directories) take the
        direct path and skip the queue round trip.
        """
        if self.spool_writer.idle():
            self.spool_writer.record(item)
        else:
            await self._put_ordered(group, item)
