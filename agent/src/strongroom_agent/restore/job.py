"""One restore job: walk the point's manifest and restore each entry below the destination.

Conflicts: SKIP (default) leaves an existing file, symlink or directory's
metadata alone and counts it as skipped; OVERWRITE replaces files and
symlinks and re-applies directory metadata (``metadata.py``).

Throughput (restic's restorer is the model): regular files are restored in
batches of up to ``fetch_batch_bytes`` of content (and ``FETCH_BATCH_MAX_IDS``
chunk ids). One ``ReadChunks`` call fetches a batch's distinct chunks
(``fetch.py``), then a small pool of threads writes the batch's files
(``writer.py``) while the next batch is fetched; at most ``BATCHES_IN_FLIGHT``
batches hold content at a time. A file larger than a batch is streamed in
bounded windows on its own, in the large-file lane: one such file at a time,
while the walk goes on with the batches (at most ``LARGE_FILES_AHEAD`` large
files wait for the lane). Streaming one large file keeps neither the
machine's cores nor the gateway busy (a window is fetched while the one
before is written); waiting for it stopped the small files too (ADR 0076).
Directories and symlinks are made as the walk meets them; every filesystem
operation is descriptor-relative (``destination.py``). The writer pool is
created here and passed in.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import stat
import threading
from collections.abc import AsyncIterator, Sequence

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2

from strongroom_agent.gateway_client import GatewayClient
from strongroom_agent.jobs import FileError, ProgressCallback, job_finished, run_job
from strongroom_agent.restore.destination import Destination, EntryProblem, UnsafePath, safe_parts
from strongroom_agent.restore.fetch import Fetcher
from strongroom_agent.restore.metadata import DirectoryMetadata
from strongroom_agent.restore.writer import WRITE_THREADS, Batch, File, in_threads

FETCH_BATCH_BYTES = 32 << 20
# Distinct chunk ids per ReadChunks call of a batch (the gateway takes up to 20,000).
FETCH_BATCH_MAX_IDS = 4096
FETCH_BATCH_MAX_FILES = 4096
# Batches holding content at a time: one being written while the next is fetched.
BATCHES_IN_FLIGHT = 2
# Large files the walk may pass before the lane streams them (each waits as its entry, no content).
LARGE_FILES_AHEAD = 64
# Manifest entries handled per step (the gateway sends 1,000 per message): their directories are
# made in one worker-thread call. A thread hop per directory waited for the GIL while the writer
# threads held it: ~5,000 directories of the benchmark tree were most of its restore's wall time.
ENTRY_GROUP = 1000


class _Restore:
    def __init__(
        self,
        command: gateway_pb2.RunRestore,
        client: GatewayClient,
        destination: Destination,
        pool: concurrent.futures.ThreadPoolExecutor,
        stats: common_pb2.JobStats,
        errors: list[FileError],
        cancel: asyncio.Event,
        fetch_batch_bytes: int,
    ) -> None:
        self.command = command
        self.client = client
        self.dest = destination
        self.stats = stats
        self.errors = errors
        self.cancel = cancel
        self.overwrite = command.conflict_policy == gateway_pb2.CONFLICT_POLICY_OVERWRITE
        self.fetch_batch_bytes = fetch_batch_bytes
        self.stop = threading.Event()
        self.pool = pool
        self.fetcher = Fetcher(client, command.restore_job_id, destination, fetch_batch_bytes)
        self.metadata = DirectoryMetadata(destination, errors)
        self.batch = Batch(0)
        self.full: collections.deque[Batch] = collections.deque()  # full batches not yet submitted
        self.inflight: collections.deque[tuple[Batch, asyncio.Task[None]]] = collections.deque()
        # Directories this restore created: a name below one is free unless something appeared since,
        # which the O_EXCL create catches, so its files need no conflict check.
        self.created_dirs: set[tuple[str, ...]] = set()
        # The large-file lane: files larger than a batch, streamed one at a time in walk order, each
        # with its own batch number (its directories' metadata waits for it as for a batch).
        self.large: collections.deque[tuple[int, list[str], common_pb2.FileEntry]] = collections.deque()
        self.large_room = asyncio.Semaphore(LARGE_FILES_AHEAD)
        self.lane: asyncio.Task[None] | None = None

    def close(self) -> None:
        """Stop the writer threads, wait for them, then close the destination (blocking; call in a thread)."""
        self.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.dest.close()

    async def run(self) -> None:
        request = gateway_pb2.ReadManifestRequest(
            restore_job_id=self.command.restore_job_id,
            point_id=self.command.point_id,
            include_paths=self.command.include_paths,
            exclude_paths=self.command.exclude_paths,
        )
        try:
            async for group in _groups(self.client.read_manifest(request), ENTRY_GROUP):
                if self.cancel.is_set():
                    return
                made = await asyncio.to_thread(self._make_dirs, group)
                for entry, made_dir in zip(group, made, strict=True):
                    if self.cancel.is_set():
                        return
                    path = entry.path
                    if self.metadata.due(path.encode()):
                        await self._finish_dirs_before(path.encode())
                    try:
                        # The common case, a small file, without a coroutine step of its own.
                        if entry.type == common_pb2.ENTRY_TYPE_FILE and not self._large(entry):
                            parts = safe_parts(path)
                            if parts and self._add_to_batch(parts, entry):
                                await self._start_full()
                            continue
                        await self._restore_entry(entry, made_dir)
                    except UnsafePath as exc:
                        self.errors.append(FileError(path, str(exc)))
                    except EntryProblem as exc:
                        self.errors.append(FileError(path, str(exc)))
                    except OSError as exc:
                        self.errors.append(FileError(path, exc.strerror or str(exc)))
            await self._submit()
            while self.inflight:
                await self._harvest_oldest()
            if self.lane is not None:
                await self.lane  # a gateway failure in the lane fails the job
            await self._finish_dirs_before(None)
        finally:
            self.stop.set()
            tasks = [task for _, task in self.inflight] + ([self.lane] if self.lane is not None else [])
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _finish_dirs_before(self, path: bytes | None) -> None:
        """Hand the directories whose subtree ends before ``path`` (all when None) to the metadata stage."""
        needed = self.batch.seq if self.batch.files else self.batch.seq - 1
        await self.metadata.finish_before(path, needed)

    def _make_dirs(self, group: Sequence[common_pb2.FileEntry]) -> list[bool | Exception | None]:
        """Create the directories of a group of entries in order (in a worker thread, one call per group).

        For each entry: whether its directory was created (False: one was there),
        the exception that stopped it, or None when it is not a directory made here.
        Only the directories before the group's first symlink are made here: a
        symlink is created as the walk meets it, and whatever follows must see it
        (a directory "through" a restored symlink fails). Files are created later
        anyway, by the batches' writers or the large-file lane.
        """
        made: list[bool | Exception | None] = []
        in_order = True
        for entry in group:
            if entry.type != common_pb2.ENTRY_TYPE_DIRECTORY or not in_order:
                if entry.type != common_pb2.ENTRY_TYPE_FILE:
                    in_order = False
                made.append(None)
                continue
            try:
                parts = safe_parts(entry.path)
                made.append(self.dest.make_dir(parts) if parts else None)
            except (UnsafePath, EntryProblem, OSError) as exc:
                made.append(exc)
        return made

    async def _restore_entry(self, entry: common_pb2.FileEntry, made_dir: bool | Exception | None) -> None:
        """A directory, symlink or large file (``run`` adds small files to batches itself)."""
        parts = safe_parts(entry.path)
        if not parts:
            return  # the point root: the destination root itself
        if entry.type == common_pb2.ENTRY_TYPE_DIRECTORY:
            if isinstance(made_dir, Exception):
                raise made_dir
            created = await asyncio.to_thread(self.dest.make_dir, parts) if made_dir is None else made_dir
            if created:
                self.created_dirs.add(tuple(parts))
            if created or self.overwrite:
                self.metadata.add(parts, entry)
            return
        if entry.type == common_pb2.ENTRY_TYPE_FILE:
            await self._to_lane(parts, entry)
            return
        if entry.type != common_pb2.ENTRY_TYPE_SYMLINK:
            raise EntryProblem(f"unknown entry type {entry.type}")
        if await self._name_free(parts) is None:
            return
        await asyncio.to_thread(self.dest.make_symlink, parts, entry)
        self.stats.files_restored += 1

    async def _name_free(self, parts: list[str], *, check: bool = True) -> bool | None:
        """The conflict check of a symlink or a large file: True when its name is free, False when
        OVERWRITE replaces what is there, None when SKIP leaves it (counted skipped). EntryProblem when
        a directory is in the way. ``check`` False: the name is in a directory this restore created
        (not looked at: the ``O_EXCL`` create still catches a name taken meanwhile)."""
        existing = await asyncio.to_thread(self.dest.existing, parts) if check else None
        if existing is None:
            return True
        if not self.overwrite:
            self.stats.files_skipped += 1
            return None
        if stat.S_ISDIR(existing.st_mode):
            raise EntryProblem("a directory is in the way")
        return False

    async def _to_lane(self, parts: list[str], entry: common_pb2.FileEntry) -> None:
        """Queue a large file for the lane, numbered as a batch of its own after the open batch's files.

        The open batch is submitted first, so every file the walk met before
        this one is in a lower-numbered batch: a directory's metadata waits for
        the highest number below it (``_finish_dirs_before``), large files included.
        """
        self._check_lane()
        await self.large_room.acquire()  # released by the lane as it finishes a file (or fails)
        self._check_lane()
        await self._submit()
        seq = self.batch.seq
        self.batch = Batch(seq + 1)
        self.large.append((seq, parts, entry))
        if self.lane is None or self.lane.done():
            self.lane = asyncio.create_task(self._stream_large())

    def _check_lane(self) -> None:
        """Raise the lane's failure (a gateway error) as soon as the walk gets to see it."""
        if self.lane is not None and self.lane.done():
            self.lane.result()

    async def _stream_large(self) -> None:
        """The lane: stream the queued large files one at a time, in order; account each, then its number."""
        try:
            while self.large:
                seq, parts, entry = self.large[0]
                try:
                    await self._large_file(parts, entry)
                except (EntryProblem, OSError) as exc:
                    reason = str(exc) if isinstance(exc, EntryProblem) else exc.strerror or str(exc)
                    self.errors.append(FileError(entry.path, reason))
                self.large.popleft()
                self.large_room.release()
                await self.metadata.batch_done(seq)
        finally:
            for _ in self.large:  # failed: a walk waiting for room wakes up and sees the failure
                self.large_room.release()

    async def _large_file(self, parts: list[str], entry: common_pb2.FileEntry) -> None:
        """Check and stream one large file (the lane's step), counting it restored or skipped."""
        free = await self._name_free(parts, check=not self._in_created_dir(parts))
        if free is None:
            return
        written = await self.fetcher.large_file(parts, entry, fresh=free, overwrite=self.overwrite)
        if written is None:
            self.stats.files_skipped += 1
            return
        self.stats.bytes_restored += written
        self.stats.files_restored += 1

    def _in_created_dir(self, parts: list[str]) -> bool:
        return tuple(parts[:-1]) in self.created_dirs

    def _large(self, entry: common_pb2.FileEntry) -> bool:
        return entry.size > self.fetch_batch_bytes or len(entry.chunk_ids) > FETCH_BATCH_MAX_IDS

    def _add_to_batch(self, parts: list[str], entry: common_pb2.FileEntry) -> bool:
        """Add a small file to the open batch, or, when it does not fit, to a new one; True: submit the full one.

        Plain bookkeeping on the event loop, no coroutine step: a full batch is
        swapped for a new one here and the caller awaits ``_start_full``.
        """
        batch = self.batch
        ids = list(entry.chunk_ids)  # read out of the message once; the writer uses this list too
        known = batch.ids
        full = bool(batch.files) and (
            batch.content_bytes + entry.size > self.fetch_batch_bytes
            or len(batch.files) >= FETCH_BATCH_MAX_FILES
            or (
                len(known) + len(ids) > FETCH_BATCH_MAX_IDS  # an upper bound first: counting is rarely needed
                and len(known) + sum(1 for c in ids if c not in known) > FETCH_BATCH_MAX_IDS
            )
        )
        if full:
            self.full.append(batch)
            batch = self.batch = Batch(batch.seq + 1)
        new_dir = tuple(parts[:-1]) in self.created_dirs
        batch.files.append(File(parts, entry, ids, exists=not new_dir, new_dir=new_dir))
        batch.content_bytes += entry.size
        if len(ids) == 1:
            batch.ids[ids[0]] = None
        else:
            batch.ids.update(dict.fromkeys(ids))
        return full

    async def _submit(self) -> None:
        """Start fetching and writing the open batch (the last one)."""
        if self.batch.files:
            self.full.append(self.batch)
            self.batch = Batch(self.batch.seq + 1)
        await self._start_full()

    async def _start_full(self) -> None:
        """Start fetching and writing the full batches; wait while too many batches hold content."""
        while self.full:
            while len(self.inflight) >= BATCHES_IN_FLIGHT:
                await self._harvest_oldest()
            batch = self.full.popleft()
            self.inflight.append((batch, asyncio.create_task(self._process(batch))))

    async def _harvest_oldest(self) -> None:
        self._check_lane()
        batch, task = self.inflight[0]
        await task  # a gateway failure fails the job
        self.inflight.popleft()
        for f in batch.files:
            if f.skipped:
                self.stats.files_skipped += 1
            elif f.error is not None:
                self.errors.append(FileError(f.entry.path, f.error))
            elif f.written:
                self.stats.files_restored += 1
                self.stats.bytes_restored += f.entry.size
        await self.metadata.batch_done(batch.seq)

    async def _process(self, batch: Batch) -> None:
        """Check for conflicts, fetch the distinct chunks of the files to write in one call, write them."""
        unchecked = [f for f in batch.files if f.exists]
        if unchecked:
            await in_threads(self.pool, self.dest, self.stop, unchecked, lambda w, run: w.check(run, self.overwrite))
        wanted = [f for f in batch.files if not f.skipped and f.error is None]
        if len(wanted) == len(batch.files):
            ids = list(batch.ids)
        else:
            ids = list(dict.fromkeys(c for f in wanted for c in f.ids))
        contents = await self.fetcher.batch(ids)
        await in_threads(self.pool, self.dest, self.stop, wanted, lambda w, run: w.write(run, contents, self.overwrite))


async def _groups(
    messages: AsyncIterator[Sequence[common_pb2.FileEntry]], size: int
) -> AsyncIterator[Sequence[common_pb2.FileEntry]]:
    """The entries of ``messages`` in groups of at least ``size`` (but the last); a large message is a group itself."""
    group: list[common_pb2.FileEntry] = []
    async for entries in messages:
        if not group and len(entries) >= size:
            yield entries
            continue
        group.extend(entries)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group


def destination_root(command: gateway_pb2.RunRestore) -> str:
    """Where the point's paths are restored: target_path, or the source mount point (original location)."""
    return command.target_path or command.source_mount_point


async def run_restore(
    command: gateway_pb2.RunRestore,
    *,
    client: GatewayClient,
    cancel: asyncio.Event,
    on_progress: ProgressCallback | None = None,
    progress_interval: float = 5.0,
    as_root: bool | None = None,
    fetch_batch_bytes: int = FETCH_BATCH_BYTES,
) -> gateway_pb2.JobFinished:
    """Run one restore job; never raises for job-level failures (they become FAILED)."""
    job_id = command.restore_job_id
    stats = common_pb2.JobStats()
    errors: list[FileError] = []
    root = destination_root(command)
    if not root or not os.path.isabs(root):
        return job_finished(
            job_id, common_pb2.JOB_STATUS_FAILED, stats, errors, f"restore path {root!r} is not an absolute path"
        )
    if not os.path.isdir(root):
        return job_finished(
            job_id, common_pb2.JOB_STATUS_FAILED, stats, errors, f"restore path {root} does not exist on this instance"
        )
    try:
        destination = Destination(root, as_root=os.geteuid() == 0 if as_root is None else as_root)
    except OSError as exc:
        return job_finished(
            job_id, common_pb2.JOB_STATUS_FAILED, stats, errors, f"cannot open restore path {root}: {exc.strerror}"
        )

    pool = concurrent.futures.ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="restore-write")
    restore = _Restore(command, client, destination, pool, stats, errors, cancel, fetch_batch_bytes)

    async def close() -> None:
        await asyncio.to_thread(restore.close)

    finished = await run_job(
        restore.run(),
        job_id=job_id,
        cancel=cancel,
        stats=stats,
        errors=errors,
        on_progress=on_progress,
        progress_interval=progress_interval,
        finish=close,
    )
    return nothing_restored_fails(finished)


def nothing_restored_fails(finished: gateway_pb2.JobFinished) -> gateway_pb2.JobFinished:
    """PARTIAL_COMPLETE becomes FAILED when not one file or link was restored or skipped (ADR 0030).

    Some files failed and nothing else could be done: the operator must see a
    failure, not a partial success; the per-file errors stay in the report.
    """
    stats = finished.stats
    if finished.status == common_pb2.JOB_STATUS_PARTIAL_COMPLETE and not (stats.files_restored or stats.files_skipped):
        finished.status = common_pb2.JOB_STATUS_FAILED
        first = finished.failed_files[0] if finished.failed_files else None
        example = f"; first: {first.path}: {first.reason}" if first is not None else ""
        finished.error = f"no file could be restored ({stats.files_failed} failed{example})"
    return finished
