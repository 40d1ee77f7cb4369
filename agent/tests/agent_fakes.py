"""An in-memory gateway implementing the agent's GatewayClient protocol.

It checks what the real gateway checks: chunk ids are the keyed BLAKE3 of the
decompressed payload, manifest entries arrive sorted by UTF-8 path bytes with
the header first, and every chunk an entry references has been uploaded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import blake3
import pytest
import zstandard
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_agent.backup import native
from strongroom_agent.gateway_client import GatewayError
from strongroom_agent.wire import SentChunk

KEY = bytes(range(32))
MANIFEST_MESSAGE_ENTRIES = 1000  # entries per ReadManifest message, as the gateway sends them
REPOSITORY = gateway_pb2.RepositoryParameters(
    chunker_min_size=1024, chunker_avg_size=4096, chunker_max_size=16384, chunk_id_key=KEY, chunker_seed=7
)


def run_backup_command(job_id: str = "job-1", **kwargs: object) -> gateway_pb2.RunBackup:
    kwargs.setdefault("accepts_base_point", True)
    command = gateway_pb2.RunBackup(job_id=job_id, max_cores=2, **kwargs)  # type: ignore[arg-type]
    command.repository.CopyFrom(REPOSITORY)
    return command


@dataclass
class Point:
    point_id: str
    job_id: str
    filesystem: common_pb2.Filesystem
    entries: list[common_pb2.FileEntry]


@dataclass
class FakeGateway:
    key: bytes = KEY
    chunks: dict[bytes, bytes] = field(default_factory=dict)
    points: dict[str, Point] = field(default_factory=dict)
    uploaded: list[bytes] = field(default_factory=list)  # every chunk id ever uploaded, in order
    upload_calls: int = 0
    find_calls: int = 0
    max_find_batch: int = 0
    read_chunk_calls: int = 0
    fail_uploads: bool = False
    manifest_batches: list[int] = field(default_factory=list)
    # Calls ("find", "upload", "commit") that fail with UNAVAILABLE before succeeding.
    unavailable: dict[str, int] = field(default_factory=dict)
    # Calls ("upload", "commit") that do their work, then fail with DEADLINE_EXCEEDED (a stalled or
    # killed gateway replica: the effect happened, the answer never arrived) before succeeding.
    timed_out: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    # Every CommitPoint header and what it sent (entries, deleted paths).
    commits: list[tuple[gateway_pb2.PointHeader, list[common_pb2.FileEntry], list[str]]] = field(default_factory=list)
    refuse_bases: bool = False
    # Chunks stored but damaged, and the reason the gateway gives (ADR 0030).
    damaged: dict[bytes, str] = field(default_factory=dict)

    def _call(self, kind: str) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        if self.unavailable.get(kind, 0) > 0:
            self.unavailable[kind] -= 1
            raise GatewayError("UNAVAILABLE", f"{kind}: connection reset")

    def _answer(self, kind: str) -> None:
        """Raise DEADLINE_EXCEEDED after the work of a call if ``timed_out`` says so."""
        if self.timed_out.get(kind, 0) > 0:
            self.timed_out[kind] -= 1
            raise GatewayError("DEADLINE_EXCEEDED", "Deadline Exceeded")

    async def find_missing_chunks(self, job_id: str, chunk_ids: Sequence[bytes]) -> list[bytes]:
        self._call("find")
        self.find_calls += 1
        self.max_find_batch = max(self.max_find_batch, len(chunk_ids))
        assert job_id
        return [c for c in chunk_ids if c not in self.chunks]

    async def upload_chunks(
        self, requests: Sequence[bytes | gateway_pb2.UploadChunkRequest]
    ) -> gateway_pb2.UploadChunksResponse:
        """Serialized requests (the agent's client) or messages (through the gRPC server of test_agent_grpc)."""
        if self.fail_uploads:
            raise GatewayError("UNAVAILABLE", "object store down")
        self._call("upload")
        self.upload_calls += 1
        stored = present = 0
        messages = [gateway_pb2.UploadChunkRequest.FromString(r) if isinstance(r, bytes) else r for r in requests]
        for request in (c for r in messages for c in (r.chunks if r.chunks else [r])):
            if request.compression == gateway_pb2.CHUNK_COMPRESSION_ZSTD:
                data = zstandard.ZstdDecompressor().decompress(request.payload, max_output_size=request.raw_length)
            else:
                assert request.compression == gateway_pb2.CHUNK_COMPRESSION_NONE
                data = request.payload
            assert len(data) == request.raw_length
            if blake3.blake3(data, key=self.key).digest() != request.chunk_id:
                raise GatewayError("INVALID_ARGUMENT", "chunk id does not match content")
            self.uploaded.append(request.chunk_id)
            if request.chunk_id in self.chunks:
                present += 1
            else:
                stored += 1
                self.chunks[request.chunk_id] = data
        self._answer("upload")
        return gateway_pb2.UploadChunksResponse(chunks_stored=stored, chunks_already_present=present)

    async def commit_point(
        self, requests: AsyncIterator[gateway_pb2.CommitPointRequest]
    ) -> gateway_pb2.CommitPointResponse:
        first = await anext(requests)
        assert first.WhichOneof("part") == "header"
        header = first.header
        sent: list[common_pb2.FileEntry] = []
        deleted: list[str] = []
        async for request in requests:
            assert request.WhichOneof("part") == "entries"
            self.manifest_batches.append(len(request.entries.entries))
            for entry in request.entries.entries:
                if sent and entry.path.encode() <= sent[-1].path.encode():
                    raise GatewayError("INVALID_ARGUMENT", f"unsorted entry {entry.path!r} after {sent[-1].path!r}")
                for cid in entry.chunk_ids:
                    if cid not in self.chunks:
                        raise GatewayError("FAILED_PRECONDITION", f"chunk of {entry.path!r} was never uploaded")
                sent.append(entry)
            deleted.extend(request.entries.deleted_paths)
        self._call("commit")
        self.commits.append((header, sent, deleted))
        entries = sent
        if header.base_point_id:
            base = self.points.get(header.base_point_id)
            if base is None or self.refuse_bases:
                raise GatewayError("FAILED_PRECONDITION", f"unknown base point {header.base_point_id}")
            assert not deleted or [d.encode() for d in deleted] == sorted(d.encode() for d in deleted)
            merged = {e.path: e for e in base.entries}
            for path in deleted:
                merged.pop(path, None)
            for entry in sent:
                assert entry.path not in deleted
                merged[entry.path] = entry
            entries = sorted(merged.values(), key=lambda e: e.path.encode())
            if len(entries) != header.entry_count:
                raise GatewayError(
                    "FAILED_PRECONDITION", f"{len(entries)} entries, agent expected {header.entry_count}"
                )
        else:
            assert not deleted
        for existing in self.points.values():
            if existing.job_id == header.job_id and existing.filesystem.mount_point == header.filesystem.mount_point:
                self._answer("commit")
                return gateway_pb2.CommitPointResponse(point_id=existing.point_id)
        point_id = f"point-{len(self.points) + 1}"
        self.points[point_id] = Point(point_id, header.job_id, header.filesystem, entries)
        self._answer("commit")
        total = sum(e.size for e in entries)
        return gateway_pb2.CommitPointResponse(point_id=point_id, file_count=len(entries), total_bytes=total)

    def point(self, point_id: str) -> Point:
        return self.points[point_id]

    async def read_manifest(
        self, request: gateway_pb2.ReadManifestRequest
    ) -> AsyncIterator[Sequence[common_pb2.FileEntry]]:
        """The point's entries below the include paths, in messages of ``MANIFEST_MESSAGE_ENTRIES`` entries."""
        entries = [e async for e in self._entries(request)]
        for start in range(0, len(entries), MANIFEST_MESSAGE_ENTRIES):
            yield entries[start : start + MANIFEST_MESSAGE_ENTRIES]

    async def _entries(self, request: gateway_pb2.ReadManifestRequest) -> AsyncIterator[common_pb2.FileEntry]:
        point = self.points.get(request.point_id)
        if point is None:
            raise GatewayError("NOT_FOUND", f"no point {request.point_id}")

        def under(path: str, prefixes: Sequence[str]) -> bool:
            return any(p == "" or path == p or path.startswith(p + "/") for p in prefixes)

        for entry in point.entries:
            if request.include_paths and not under(entry.path, request.include_paths):
                continue
            if under(entry.path, request.exclude_paths):
                continue
            yield entry

    async def read_chunks(self, restore_job_id: str, chunk_ids: Sequence[bytes]) -> AsyncIterator[SentChunk]:
        self.read_chunk_calls += 1
        # Answer in reverse order: the protocol promises no order. Every other chunk goes out zstd
        # compressed, as a gateway does for chunks stored compressed.
        for number, cid in enumerate(reversed(list(dict.fromkeys(chunk_ids)))):
            if cid not in self.chunks:
                raise GatewayError("NOT_FOUND", "chunk missing")
            await asyncio.sleep(0)
            if cid in self.damaged:
                yield SentChunk(cid, b"", gateway_pb2.CHUNK_COMPRESSION_NONE, 0, self.damaged[cid])
                continue
            content = self.chunks[cid]
            if number % 2:
                yield SentChunk(cid, zstandard.compress(content), gateway_pb2.CHUNK_COMPRESSION_ZSTD, len(content))
            else:
                yield SentChunk(cid, content, gateway_pb2.CHUNK_COMPRESSION_NONE, len(content))

    async def read_chunks_responses(
        self, request: gateway_pb2.ReadChunksRequest, *, legacy: bool = False
    ) -> AsyncIterator[gateway_pb2.ReadChunksResponse]:
        """ReadChunks as the wire protocol defines it: request order, every occurrence, in messages.

        With ``max_message_bytes`` the chunks of consecutive positions share a
        message up to that many bytes of data (a larger chunk alone); without it,
        or when ``legacy`` (a gateway that predates the field), one chunk per
        message in the response's own fields. Every other chunk is sent zstd
        compressed when the request accepts compressed data.
        """
        self.read_chunk_calls += 1
        for cid in request.chunk_ids:
            if cid not in self.chunks:
                raise GatewayError("NOT_FOUND", "chunk missing")
        limit = 0 if legacy else request.max_message_bytes
        tolerant = request.tolerate_damage and limit > 0
        batch = gateway_pb2.ReadChunksResponse()
        for number, cid in enumerate(request.chunk_ids):
            content = self.chunks[cid]
            served = gateway_pb2.ServedChunk(chunk_id=cid, data=content, raw_length=len(content))
            if cid in self.damaged:
                if not tolerant:
                    raise GatewayError("FAILED_PRECONDITION", f"stored chunk {cid.hex()} is corrupt")
                served = gateway_pb2.ServedChunk(chunk_id=cid, damage=self.damaged[cid])
            if request.accept_compressed and number % 2:
                served.data = zstandard.compress(content)
                served.compression = gateway_pb2.CHUNK_COMPRESSION_ZSTD
            if not limit:
                yield gateway_pb2.ReadChunksResponse(
                    chunk_id=served.chunk_id,
                    data=served.data,
                    compression=served.compression,
                    raw_length=served.raw_length,
                )
                continue
            if batch.chunks and sum(len(c.data) for c in batch.chunks) + len(served.data) > limit:
                yield batch
                batch = gateway_pb2.ReadChunksResponse()
            batch.chunks.append(served)
        if batch.chunks:
            yield batch

    def connect(self) -> FakeControlStream:
        raise NotImplementedError("use FakeSessionGateway for session tests")

    # helpers for assertions
    def only_point(self) -> Point:
        assert len(self.points) == 1, self.points.keys()
        return next(iter(self.points.values()))

    def last_point(self) -> Point:
        return list(self.points.values())[-1]

    def content(self, entry: common_pb2.FileEntry) -> bytes:
        return b"".join(self.chunks[c] for c in entry.chunk_ids)


class FakeControlStream:
    """One Connect stream: the test pushes commands and reads what the agent reported."""

    def __init__(self) -> None:
        self.commands: asyncio.Queue[gateway_pb2.AgentCommand | None | Exception] = asyncio.Queue()
        self.reports: asyncio.Queue[gateway_pb2.AgentReport] = asyncio.Queue()
        self.canceled = False

    async def write(self, report: gateway_pb2.AgentReport) -> None:
        if self.canceled:
            raise GatewayError("CANCELLED", "stream canceled")
        await self.reports.put(report)

    async def read(self) -> gateway_pb2.AgentCommand | None:
        item = await self.commands.get()
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self) -> None:
        self.canceled = True


def entries_by_path(point: Point) -> dict[str, common_pb2.FileEntry]:
    return {e.path: e for e in point.entries}


def write_file(path: str, data: bytes, mode: int = 0o644, mtime_ns: int | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def native_reader() -> native.NativeExtension:
    """The built extension; skips only where cargo is absent (then nothing could have built it)."""
    loaded = native.load()
    if loaded is None:
        if shutil.which("cargo") is None:
            pytest.skip("the native extension is not built: cargo is not installed")
        pytest.fail("cargo is installed but the native extension is not built: run `make native`")
    return loaded


def threads_while(run: Callable[[], None]) -> tuple[int, int]:
    """The process's threads before ``run`` (a watcher counting them included) and the most seen while it ran."""
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(len(os.listdir("/proc/self/task")))

    watcher = threading.Thread(target=watch)
    watcher.start()
    before = len(os.listdir("/proc/self/task"))  # with the watcher
    try:
        run()
    finally:
        stop.set()
        watcher.join()
    assert seen
    return before, max(seen)
