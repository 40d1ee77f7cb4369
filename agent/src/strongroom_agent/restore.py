"""Restore: write the entries of a backup point below a destination directory.

Safety: an entry path must be relative, without ``.``/``..``/empty components.
Every directory on the way is opened with ``O_NOFOLLOW`` relative to its
parent's descriptor, starting at the destination root, so no symlink in the
destination (pre-existing, or restored a moment ago) is ever followed and
nothing is written outside the root. A file whose name the conflict check found
free is created under its final name with ``O_CREAT | O_EXCL | O_NOFOLLOW``
(which never follows or reuses anything that appeared since) and unlinked
again if anything fails before it is complete, so no partial file stays. A
file that replaces an existing one (OVERWRITE), or whose name was taken after
the check, is written to a temporary name in its directory (also ``O_EXCL``)
and renamed over the destination, which replaces (never follows) whatever was
there. Files in a directory this restore created are not checked at all: the
``O_EXCL`` create is their check.

Conflicts: SKIP (default) leaves an existing file, symlink or directory's
metadata alone and counts it as skipped; OVERWRITE replaces files and
symlinks and re-applies directory metadata. Directory modes and mtimes are
applied after their whole subtree is written (a read-only directory would
otherwise block its own contents, and writing a child changes the mtime).
The point root (path "") gets no metadata: the destination root is the
operator's choice.

Throughput (restic's restorer is the model): regular files are restored in
batches of up to ``fetch_batch_bytes`` of content (and ``FETCH_BATCH_MAX_IDS``
chunk ids). One ``ReadChunks`` call fetches a batch's distinct chunks (the
gateway reads them pack by pack), then a small pool of threads writes the
batch's files while the next batch is fetched; at most
``BATCHES_IN_FLIGHT`` batches hold content at a time. A file larger than a
batch is streamed in bounded windows on its own. Directory metadata waits for
every batch that holds a file below the directory.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import heapq
import itertools
import logging
import os
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2

from strongroom_agent.chunking import decode_chunk
from strongroom_agent.gateway_client import GatewayClient, GatewayError, SentChunk
from strongroom_agent.jobs import FileError, ProgressCallback, job_finished, run_job

log = logging.getLogger(__name__)

FETCH_BATCH_BYTES = 32 << 20
# Distinct chunk ids per ReadChunks call of a batch (the gateway takes up to 20,000).
FETCH_BATCH_MAX_IDS = 4096
FETCH_BATCH_MAX_FILES = 4096
# A file larger than a batch is streamed in windows of at most this many ids.
LARGE_FILE_WINDOW_IDS = 256
# Batches holding content at a time: one being written while the next is fetched.
BATCHES_IN_FLIGHT = 2
WRITE_THREADS = 3
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Temporary names: this process's id and a counter are unique among live restores (a name left by a
# crashed run is skipped by O_EXCL) and cost nothing, unlike a random name per file.
_temp_numbers = itertools.count()
_TEMP_ATTEMPTS = 100


def _temp_name() -> str:
    return f".strongroom-restore-{os.getpid()}-{next(_temp_numbers)}.tmp"


def _process_umask() -> int | None:
    """This process's umask without changing it (``os.umask`` can only be read by setting it); None if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def _open_temp(pfd: int) -> tuple[int, str]:
    """A new temporary file in the directory ``pfd`` (mode 0600) and its name."""
    for _ in range(_TEMP_ATTEMPTS):
        name = _temp_name()
        try:
            return os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=pfd), name
        except FileExistsError:
            continue  # left behind by an earlier process with the same id
    raise FileExistsError(errno.EEXIST, "no free temporary name", name)


def _decode_all(sent: list[SentChunk]) -> list[tuple[bytes, bytes]]:
    """(chunk id, content) of each chunk; a chunk that does not decode fails the job (DATA_LOSS)."""
    out = []
    for chunk in sent:
        try:
            out.append((chunk.chunk_id, decode_chunk(chunk.data, chunk.compression, chunk.raw_length)))
        except ValueError as exc:
            raise GatewayError("DATA_LOSS", f"chunk {chunk.chunk_id.hex()} sent by the gateway: {exc}") from None
    return out


class UnsafePath(ValueError):
    """An entry path that could escape the destination root."""


def safe_parts(path: str) -> list[str]:
    """The components of a point-relative path; UnsafePath for anything that is not plainly relative."""
    if path == "":
        return []
    if path.startswith("/") or "\x00" in path:
        raise UnsafePath(f"refusing unsafe path {path!r}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePath(f"refusing unsafe path {path!r}")
    return parts


class _EntryProblem(Exception):
    """A per-entry failure (the job becomes PARTIAL_COMPLETE)."""


@dataclass(order=True)
class _PendingDir:
    key: bytes  # path + "/": the entries below the directory sort right after it
    parts: list[str] = field(compare=False)
    entry: common_pb2.FileEntry = field(compare=False)


class _Destination:
    """Descriptor-relative operations below the destination root (run in threads, serialized)."""

    def __init__(self, root: str, *, as_root: bool) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.as_root = as_root
        self._umask = _process_umask()
        self._lock = threading.Lock()
        self._cached: tuple[tuple[str, ...], int] | None = None

    def _creation_mode(self, entry: common_pb2.FileEntry) -> int | None:
        """The mode to create a file in place with that needs no ``fchmod`` afterwards; None when one is needed.

        Only without set-id or sticky bits, without a chown (which would clear
        them anyway, so root always chmods) and when the umask removes nothing.
        """
        mode = entry.mode & 0o7777
        if self.as_root or self._umask is None or mode & 0o7000 or mode & self._umask:
            return None
        return mode

    def close(self) -> None:
        with self._lock:
            self._drop_cache()
            os.close(self.root_fd)

    def _drop_cache(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _open_dir(self, parts: list[str], *, create: bool) -> int:
        """A new descriptor of the directory at ``parts`` (never through a symlink)."""
        fd = os.dup(self.root_fd)
        try:
            for part in parts:
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _EntryProblem(
                            f"refusing to write through {'/'.join(parts)!r}: {part!r} is not a directory"
                        ) from exc
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def parent(self, parts: list[str]) -> int:
        """Descriptor of the parent directory of ``parts`` (cached; creates missing directories)."""
        key = tuple(parts[:-1])
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        self._drop_cache()
        fd = self._open_dir(list(key), create=True)
        self._cached = (key, fd)
        return fd

    def existing(self, parts: list[str]) -> os.stat_result | None:
        with self._lock:
            try:
                return os.stat(parts[-1], dir_fd=self.parent(parts), follow_symlinks=False)
            except FileNotFoundError:
                return None

    def make_dir(self, parts: list[str]) -> bool:
        """Create the directory; False when a directory was already there."""
        with self._lock:
            pfd = self.parent(parts)
            try:
                os.mkdir(parts[-1], 0o700, dir_fd=pfd)
                return True
            except FileExistsError:
                st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise _EntryProblem("exists and is not a directory") from None
                return False

    def create_file(self, parts: list[str], *, fresh: bool, overwrite: bool) -> tuple[int, str | None] | None:
        """Open a file to stream into: ``(fd, temp)``, ``temp`` None when it is the final name itself.

        ``fresh`` (the check found the name free): created in place; if the
        name was taken since, SKIP gives None and OVERWRITE a temporary file.
        """
        with self._lock:
            pfd = self.parent(parts)
            if fresh:
                try:
                    return os.open(parts[-1], _NEW_FILE_FLAGS, 0o600, dir_fd=pfd), None
                except FileExistsError:
                    if not overwrite:
                        return None
            return _open_temp(pfd)

    @staticmethod
    def write(fd: int, data: Sequence[bytes]) -> None:
        for piece in data:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]

    def finish_file(self, parts: list[str], fd: int, temp: str | None, entry: common_pb2.FileEntry) -> None:
        """Apply the metadata, close ``fd`` and rename a temporary file into place (``temp`` None: in place)."""
        with self._lock:
            pfd = self.parent(parts)
            try:
                self._apply_metadata(fd, entry, chmod=True)
            finally:
                os.close(fd)
            if temp is not None:
                self._replace(pfd, temp, parts[-1])

    def _apply_metadata(self, fd: int, entry: common_pb2.FileEntry, *, chmod: bool) -> None:
        """Owner (as root), mode (unless the file was created with it) and mtime of a written file."""
        if self.as_root:
            os.fchown(fd, entry.uid, entry.gid)  # before chmod: chown clears set-id bits
        if chmod:
            os.fchmod(fd, entry.mode & 0o7777)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    def _replace(self, pfd: int, temp: str, name: str) -> None:
        try:
            os.rename(temp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except OSError as exc:
            os.unlink(temp, dir_fd=pfd)
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise _EntryProblem("a directory is in the way") from exc
            raise

    def discard_file(self, parts: list[str], fd: int, temp: str | None) -> None:
        """Close and unlink a file that ``create_file`` made (the final name itself when ``temp`` is None)."""
        with self._lock:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(parts[-1] if temp is None else temp, dir_fd=self.parent(parts))

    def make_symlink(self, parts: list[str], entry: common_pb2.FileEntry) -> None:
        with self._lock:
            pfd = self.parent(parts)
            temp = _temp_name()
            os.symlink(entry.link_target, temp, dir_fd=pfd)
            try:
                if self.as_root:
                    os.chown(temp, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
                with contextlib.suppress(NotImplementedError):
                    os.utime(temp, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=pfd, follow_symlinks=False)
            except BaseException:
                os.unlink(temp, dir_fd=pfd)
                raise
            self._replace(pfd, temp, parts[-1])

    def open_parent(self, parts: list[str]) -> int:
        """A new descriptor of the parent of ``parts`` for one writer thread (creates missing directories)."""
        return self._open_dir(parts[:-1], create=True)

    def write_new(
        self,
        pfd: int,
        parts: list[str],
        entry: common_pb2.FileEntry,
        pieces: Sequence[bytes],
        *,
        fresh: bool,
        overwrite: bool,
    ) -> bool:
        """Write a whole file into ``pfd`` with its metadata; False when SKIP leaves a name taken since the check.

        ``fresh`` (the check found the name free): created under its final name
        (``O_EXCL``) and unlinked again on any failure. Otherwise, or when the
        name was taken meanwhile under OVERWRITE: a temporary file renamed over it.
        """
        name = parts[-1]
        if fresh:
            # Created with its final mode when that is exact (one system call less per file), else 0600.
            mode = self._creation_mode(entry)
            try:
                fd = os.open(name, _NEW_FILE_FLAGS, 0o600 if mode is None else mode, dir_fd=pfd)
            except FileExistsError:
                if not overwrite:
                    return False
            else:
                self._fill(pfd, fd, name, entry, pieces, chmod=mode is None)
                return True
        fd, temp = _open_temp(pfd)
        self._fill(pfd, fd, temp, entry, pieces, chmod=True)
        self._replace(pfd, temp, name)
        return True

    def _fill(
        self, pfd: int, fd: int, name: str, entry: common_pb2.FileEntry, pieces: Sequence[bytes], *, chmod: bool
    ) -> None:
        """Write, apply the metadata and close the new file ``name``; unlink it if any of that fails."""
        try:
            try:
                self.write(fd, pieces)
                self._apply_metadata(fd, entry, chmod=chmod)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=pfd)
            raise

    def finish_dir(self, parts: list[str], entry: common_pb2.FileEntry) -> None:
        with self._lock:
            fd = self._open_dir(parts, create=False)
            try:
                if self.as_root:
                    os.fchown(fd, entry.uid, entry.gid)
                os.fchmod(fd, entry.mode & 0o7777)
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            finally:
                os.close(fd)


@dataclass
class _File:
    """A regular file of a batch and what became of it."""

    parts: list[str]
    entry: common_pb2.FileEntry
    skipped: bool = False
    exists: bool = True  # until the check finds the name free (or it is in a directory this restore created)
    written: bool = False
    error: str | None = None


@dataclass
class _Batch:
    seq: int
    files: list[_File] = field(default_factory=list)
    content_bytes: int = 0
    ids: dict[bytes, None] = field(default_factory=dict)


class _Writer:
    """Work on runs of a batch's files in a writer thread, keeping the current parent directory open."""

    def __init__(self, dest: _Destination, stop: threading.Event) -> None:
        self.dest = dest
        self.stop = stop
        self._key: tuple[str, ...] | None = None
        self._fd = -1

    def _parent(self, parts: list[str]) -> int:
        key = tuple(parts[:-1])
        if key != self._key:
            self.close()
            self._fd = self.dest.open_parent(parts)
            self._key = key
        return self._fd

    def close(self) -> None:
        if self._key is not None:
            os.close(self._fd)
            self._key = None

    def check(self, files: Sequence[_File], overwrite: bool) -> None:
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
                except _EntryProblem as exc:
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

    def write(self, files: Sequence[_File], contents: dict[bytes, bytes], overwrite: bool) -> None:
        """Write checked files; one whose name appeared since the check is skipped (SKIP) or replaced (OVERWRITE)."""
        try:
            for f in files:
                if self.stop.is_set():
                    return
                try:
                    pieces = [contents[c] for c in f.entry.chunk_ids]
                except KeyError as exc:
                    f.error = f"gateway did not return chunk {exc.args[0].hex()}"
                    continue
                size = sum(len(p) for p in pieces)
                if size != f.entry.size:
                    f.error = f"content is {size} bytes, expected {f.entry.size}"
                    continue
                try:
                    pfd = self._parent(f.parts)
                    if self.dest.write_new(pfd, f.parts, f.entry, pieces, fresh=not f.exists, overwrite=overwrite):
                        f.written = True
                    else:
                        f.skipped = True
                except _EntryProblem as exc:
                    f.error = str(exc)
                except OSError as exc:
                    f.error = exc.strerror or str(exc)
        finally:
            self.close()


def _runs(files: list[_File], count: int) -> list[list[_File]]:
    """``files`` cut into at most ``count`` contiguous runs (neighbours share directories)."""
    size = max(1, -(-len(files) // count))
    return [files[i : i + size] for i in range(0, len(files), size)]


class _Restore:
    def __init__(
        self,
        command: gateway_pb2.RunRestore,
        client: GatewayClient,
        destination: _Destination,
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
        self.pending: list[_PendingDir] = []
        self.stop = threading.Event()
        self.pool = pool
        self.batch = _Batch(0)
        self.inflight: collections.deque[tuple[_Batch, asyncio.Task[None]]] = collections.deque()
        self.done_seq = -1  # every batch up to this one is written and accounted
        # Directories this restore created: a name below one is free unless something appeared since,
        # which the O_EXCL create catches, so its files need no conflict check.
        self.created_dirs: set[tuple[str, ...]] = set()
        # Directories whose subtree the walk has passed, waiting for the batch that holds their last file.
        self.deferred: collections.deque[tuple[int, _PendingDir]] = collections.deque()

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
            async for entry in self.client.read_manifest(request):
                if self.cancel.is_set():
                    return
                await self._finish_dirs_before(entry.path.encode())
                try:
                    await self._restore_entry(entry)
                except UnsafePath as exc:
                    self.errors.append(FileError(entry.path, str(exc)))
                except _EntryProblem as exc:
                    self.errors.append(FileError(entry.path, str(exc)))
                except OSError as exc:
                    self.errors.append(FileError(entry.path, exc.strerror or str(exc)))
            await self._submit()
            while self.inflight:
                await self._harvest_oldest()
            await self._finish_dirs_before(None)
        finally:
            self.stop.set()
            for _, task in self.inflight:
                task.cancel()
            await asyncio.gather(*(task for _, task in self.inflight), return_exceptions=True)

    async def _finish_dirs_before(self, path: bytes | None) -> None:
        """Apply metadata of the pending directories whose subtree ends before ``path`` (all when None).

        A directory whose files may still sit in a batch being fetched or written
        waits (``deferred``) until that batch is done.
        """
        ready: list[_PendingDir] = []
        while self.pending and (
            path is None or (path > self.pending[0].key and not path.startswith(self.pending[0].key))
        ):
            ready.append(heapq.heappop(self.pending))
        if not ready:
            return
        needed = self.batch.seq if self.batch.files else self.batch.seq - 1
        # Deepest first, so a restrictive parent mode never blocks a child.
        for pending in sorted(ready, reverse=True):
            self.deferred.append((needed, pending))
        await self._apply_deferred()

    async def _apply_deferred(self) -> None:
        while self.deferred and self.deferred[0][0] <= self.done_seq:
            _, pending = self.deferred.popleft()
            try:
                await asyncio.to_thread(self.dest.finish_dir, pending.parts, pending.entry)
            except (_EntryProblem, OSError) as exc:
                self.errors.append(FileError(pending.entry.path, f"cannot set directory metadata: {exc}"))

    async def _restore_entry(self, entry: common_pb2.FileEntry) -> None:
        parts = safe_parts(entry.path)
        if not parts:
            return  # the point root: the destination root itself
        if entry.type == common_pb2.ENTRY_TYPE_DIRECTORY:
            created = await asyncio.to_thread(self.dest.make_dir, parts)
            if created:
                self.created_dirs.add(tuple(parts))
            if created or self.overwrite:
                heapq.heappush(self.pending, _PendingDir(entry.path.encode() + b"/", parts, entry))
            return
        if entry.type == common_pb2.ENTRY_TYPE_FILE and not self._large(entry):
            await self._add_to_batch(parts, entry)
            return
        if entry.type == common_pb2.ENTRY_TYPE_FILE and self._in_created_dir(parts):
            existing = None  # created with O_EXCL: a name taken meanwhile is still caught
        else:
            existing = await asyncio.to_thread(self.dest.existing, parts)
        if existing is not None and not self.overwrite:
            self.stats.files_skipped += 1
            return
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise _EntryProblem("a directory is in the way")
        if entry.type == common_pb2.ENTRY_TYPE_SYMLINK:
            await asyncio.to_thread(self.dest.make_symlink, parts, entry)
        elif entry.type == common_pb2.ENTRY_TYPE_FILE:
            if not await self._restore_large_file(parts, entry, fresh=existing is None):
                self.stats.files_skipped += 1
                return
        else:
            raise _EntryProblem(f"unknown entry type {entry.type}")
        self.stats.files_restored += 1

    def _in_created_dir(self, parts: list[str]) -> bool:
        return tuple(parts[:-1]) in self.created_dirs

    def _large(self, entry: common_pb2.FileEntry) -> bool:
        return entry.size > self.fetch_batch_bytes or len(entry.chunk_ids) > FETCH_BATCH_MAX_IDS

    async def _add_to_batch(self, parts: list[str], entry: common_pb2.FileEntry) -> None:
        batch = self.batch
        new_ids = [c for c in entry.chunk_ids if c not in batch.ids]
        if batch.files and (
            batch.content_bytes + entry.size > self.fetch_batch_bytes
            or len(batch.ids) + len(new_ids) > FETCH_BATCH_MAX_IDS
            or len(batch.files) >= FETCH_BATCH_MAX_FILES
        ):
            await self._submit()
            batch = self.batch
        batch.files.append(_File(parts, entry, exists=not self._in_created_dir(parts)))
        batch.content_bytes += entry.size
        batch.ids.update(dict.fromkeys(entry.chunk_ids))

    async def _submit(self) -> None:
        """Start fetching and writing the open batch; wait while too many batches hold content."""
        batch = self.batch
        if not batch.files:
            return
        self.batch = _Batch(batch.seq + 1)
        while len(self.inflight) >= BATCHES_IN_FLIGHT:
            await self._harvest_oldest()
        self.inflight.append((batch, asyncio.create_task(self._process(batch))))

    async def _harvest_oldest(self) -> None:
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
        self.done_seq = batch.seq
        await self._apply_deferred()

    async def _in_threads(self, files: list[_File], work: Callable[[_Writer, list[_File]], None]) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(
                loop.run_in_executor(self.pool, work, _Writer(self.dest, self.stop), run)
                for run in _runs(files, WRITE_THREADS * 2)
            )
        )

    async def _process(self, batch: _Batch) -> None:
        """Check for conflicts, fetch the distinct chunks of the files to write in one call, write them."""
        unchecked = [f for f in batch.files if f.exists]
        if unchecked:
            await self._in_threads(unchecked, lambda w, run: w.check(run, self.overwrite))
        wanted = [f for f in batch.files if not f.skipped and f.error is None]
        ids = list(dict.fromkeys(c for f in wanted for c in f.entry.chunk_ids))
        sent = [c async for c in self.client.read_chunks(self.command.restore_job_id, ids)] if ids else []
        contents = await self._decode(sent)
        await self._in_threads(wanted, lambda w, run: w.write(run, contents, self.overwrite))

    async def _decode(self, sent: list[SentChunk]) -> dict[bytes, bytes]:
        """Decompress a batch's chunks in the writer threads (``WRITE_THREADS`` runs)."""
        loop = asyncio.get_running_loop()
        step = max(1, -(-len(sent) // WRITE_THREADS))
        parts = await asyncio.gather(
            *(loop.run_in_executor(self.pool, _decode_all, sent[i : i + step]) for i in range(0, len(sent), step))
        )
        return {chunk_id: content for part in parts for chunk_id, content in part}

    def _decode_and_write(self, fd: int, wanted: list[bytes], fetched: dict[bytes, SentChunk]) -> int:
        """Decode a window of a large file and append it (one worker-thread call); the bytes written."""
        decoded = dict(_decode_all(list(fetched.values())))
        pieces = [decoded[c] for c in wanted]
        self.dest.write(fd, pieces)
        return sum(len(p) for p in pieces)

    async def _restore_large_file(self, parts: list[str], entry: common_pb2.FileEntry, *, fresh: bool) -> bool:
        """Stream a file larger than a batch in windows; False when SKIP leaves a name taken since the check."""
        created = await asyncio.to_thread(self.dest.create_file, parts, fresh=fresh, overwrite=self.overwrite)
        if created is None:
            return False
        fd, temp = created
        written = 0
        try:
            ids = list(entry.chunk_ids)
            average = max(1, entry.size // max(1, len(ids)))
            window = max(1, min(LARGE_FILE_WINDOW_IDS, self.fetch_batch_bytes // average))
            for start in range(0, len(ids), window):
                wanted = ids[start : start + window]
                fetched: dict[bytes, SentChunk] = {}
                async for chunk in self.client.read_chunks(self.command.restore_job_id, list(dict.fromkeys(wanted))):
                    fetched[chunk.chunk_id] = chunk
                missing = [c for c in wanted if c not in fetched]
                if missing:
                    raise _EntryProblem(f"gateway did not return chunk {missing[0].hex()}")
                written += await asyncio.to_thread(self._decode_and_write, fd, wanted, fetched)
            if written != entry.size:
                raise _EntryProblem(f"content is {written} bytes, expected {entry.size}")
            await asyncio.to_thread(self.dest.finish_file, parts, fd, temp, entry)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self.dest.discard_file, parts, fd, temp))
            raise
        self.stats.bytes_restored += written
        return True


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
        destination = _Destination(root, as_root=os.geteuid() == 0 if as_root is None else as_root)
    except OSError as exc:
        return job_finished(
            job_id, common_pb2.JOB_STATUS_FAILED, stats, errors, f"cannot open restore path {root}: {exc.strerror}"
        )

    pool = concurrent.futures.ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="restore-write")
    restore = _Restore(command, client, destination, pool, stats, errors, cancel, fetch_batch_bytes)

    async def close() -> None:
        await asyncio.to_thread(restore.close)

    return await run_job(
        restore.run(),
        job_id=job_id,
        cancel=cancel,
        stats=stats,
        errors=errors,
        on_progress=on_progress,
        progress_interval=progress_interval,
        finish=close,
    )
