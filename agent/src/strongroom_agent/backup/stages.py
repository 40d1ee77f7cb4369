"""The backup's chunk stages after reading: dedup → compress → upload.

Memory: stages are joined by bounded ``asyncio.Queue``s and two byte budgets
(``ByteBudget``), so memory stays bounded whatever the number or size of files.
The *content* budget bounds raw chunk content: a chunk is charged when the
reader hands it over and released when dedup finds it known or once it is
compressed and its group holds a place in the *wire* budget. The wire budget
bounds the serialized upload messages, from compression until their upload
returns (they are kept for a retry). Compressed messages are a quarter of the
content on source trees, so the wire budget lets reading go on while uploads
wait for the gateway's durability reply (ADR 0068). CPU work (zstd here; FastCDC and BLAKE3 in ``read.py``) runs in the
job's thread pool of ``max_cores`` threads; the event loop only moves data.
``PipelineLimits`` sizes every bound, with the measurements behind them.

Each stage owns its input queue (``put`` / ``close``) and runs as one or more
workers (``run``) that take whatever is ready, up to a batch, never waiting
for more. Chunks move in groups (a read step's, a small-file group's, a
compressed batch's upload messages): one event-loop step per group, not per
chunk or file, since per-item hand-offs on the loop held the GIL most of a
small-file backup's time. ``close`` queues the end marker once per worker; the point's run
closes each stage after the one before it has finished.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2

from strongroom_agent import memory
from strongroom_agent.backup.messages import Upload, upload_requests
from strongroom_agent.chunking import compress
from strongroom_agent.gateway_client import GatewayClient
from strongroom_agent.jobs import RetryPolicy

T = TypeVar("T")


@dataclass(frozen=True)
class PipelineLimits:
    """Sizes of the bounded stages (defaults suit production; tests shrink them)."""

    # Raw chunk content between read and compression (or dedup, for known chunks). Until ADR 0068
    # this budget held the content until the upload returned: 48 MiB for both uploaders' batches
    # (16 MiB each) plus 16 MiB of read-ahead; 256 MiB was no faster on the benchmark tree and
    # peaked 200 MB higher, 64 MiB ~20 MB higher than 48 (ADR 0064).
    memory_budget_bytes: int = 24 << 20
    # Serialized upload messages between compression and the return of their upload (ADR 0068):
    # with the content budget above, the same 48 MiB in all as before ADR 0068.
    wire_budget_bytes: int = 24 << 20
    # Chunk content produced per worker-thread step: held outside the budget until it is charged.
    read_batch_bytes: int = 4 << 20
    # Changed files up to small_file_bytes are read in groups, one worker-thread hop per group
    # (at most small_batch_files files or small_batch_bytes bytes): per-file hand-offs between
    # the event loop and the threads, not reading, dominated trees of small files.
    small_file_bytes: int = 1 << 20
    small_batch_files: int = 128
    small_batch_bytes: int = 4 << 20
    ordered_queue: int = 1024  # files in flight between scan and spool
    chunk_queue: int = 4096
    dedup_batch_ids: int = 1000
    compress_batch_bytes: int = 4 << 20  # content per compress step; its copies are outside the budget
    upload_batch_chunks: int = 256
    upload_batch_bytes: int = 16 << 20
    # Chunk payload per UploadChunks message (a chunk larger goes alone). Chosen under the allocator's
    # mmap threshold of the time (1 MiB), so that a message and gRPC's copy of it came from the heap and
    # reused its pages; at 4 MiB each was mapped fresh and every page of it faulted in, twice per byte
    # uploaded (ADR 0074). The threshold is now 9 MiB (ADR 0077); this size was not measured again.
    upload_message_bytes: int = 960 << 10
    uploaders: int = 2
    commit_batch_entries: int = 1000
    commit_batch_bytes: int = 1 << 20
    seen_ids: int = 200_000  # chunk ids remembered per job to skip repeat dedup queries
    # A file whose ctime is less than this before the scan started is "racy": it is
    # cached untrusted and read again next time (timestamps are coarser than writes).
    racy_window_ns: int = 2_000_000_000


class End(enum.Enum):
    """The end marker of a stage's queue: no more items follow."""

    END = enum.auto()


END = End.END


class ByteBudget:
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

    @property
    def used(self) -> int:
        return self._used

    @property
    def waiting(self) -> int:
        return len(self._waiters)

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


class SeenIds:
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
class Chunk:
    id: bytes
    content: bytes  # the raw content; with ``compression`` set, the chunk already encoded
    charge: int  # bytes held in the budget
    # Set when the reader encoded the chunk as it read it (the native path, ADR 0080): how, and the
    # raw content's length. UNSPECIFIED: ``content`` is raw and the compress stage encodes it.
    compression: gateway_pb2.ChunkCompression.ValueType = gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED
    raw_length: int = 0


async def take_batch(
    queue: asyncio.Queue[T | End], max_items: int, max_bytes: int, size: Callable[[T], int]
) -> tuple[list[T], bool]:
    """Wait for one item, then take whatever else is ready (never waiting for more).

    Stops after the end marker; the second value says whether it was taken.
    """
    first = await queue.get()
    if first is END:
        return [], True
    batch = [first]
    total = size(first)
    while len(batch) < max_items and total < max_bytes and not queue.empty():
        item = queue.get_nowait()
        if item is END:
            return batch, True
        batch.append(item)
        total += size(item)
    return batch, False


@dataclass
class Outgoing:
    """The upload messages of one compressed group of chunks, built in a worker thread.

    ``charge`` is what its chunks held of the content budget (released once the group holds
    ``wire_charge`` of the wire budget); ``raw_bytes`` is their content's size.
    """

    requests: list[bytes]  # serialized UploadChunkRequests
    chunks: int
    payload_bytes: int
    charge: int
    raw_bytes: int
    wire_charge: int = 0

    @property
    def wire_bytes(self) -> int:
        return sum(len(r) for r in self.requests)


def compress_group(job_id: str, chunks: list[Chunk], message_bytes: int) -> Outgoing:
    """Compress a group of chunks and build its upload messages, serialized (runs in a worker thread).

    A chunk the reader encoded already (``Chunk.compression`` set) is sent as it is.

    Encoding the messages copies every payload once (``upload_requests``); done
    here, that copy stays off the event loop. Memory: each chunk's content is
    dropped once compressed and each message's payloads once it is serialized,
    so the group is held about once, not three times (content, compressed,
    serialized), while it is compressed and while it waits for an uploader; the
    budget still holds the content's charge until the upload returns.
    """
    requests: list[bytes] = []
    pending: list[Upload] = []
    pending_bytes = payload_bytes = charge = raw_bytes = 0

    def seal() -> None:
        nonlocal pending_bytes
        requests.extend(upload_requests(job_id, pending, message_bytes))
        pending.clear()
        pending_bytes = 0

    for chunk in chunks:
        if chunk.compression == gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED:
            raw_length = len(chunk.content)
            compression, payload = compress(chunk.content)
        else:  # encoded by the native reader
            raw_length, compression, payload = chunk.raw_length, chunk.compression, chunk.content
        if pending and pending_bytes + len(payload) > message_bytes:
            seal()
        pending.append(Upload(chunk.id, raw_length, compression, payload, chunk.charge))
        raw_bytes += raw_length
        chunk.content = b""  # its last reference: the caller's lists may live on while this group waits
        pending_bytes += len(payload)
        payload_bytes += len(payload)
        charge += chunk.charge
    if pending:
        seal()
    return Outgoing(requests, len(chunks), payload_bytes, charge, raw_bytes)


def _group_bytes(group: list[Chunk]) -> int:
    return sum(len(c.content) for c in group)


class Uploader:
    """Sends compressed groups to the gateway in batches (``uploaders`` workers), then releases their wire budget.

    A group's messages are kept until its call returns, for a retry; the wire budget bounds them.
    """

    def __init__(
        self,
        *,
        job_id: str,
        client: GatewayClient,
        retry: RetryPolicy,
        wire: ByteBudget,
        stats: common_pb2.JobStats,
        limits: PipelineLimits,
        freed: memory.FreedPages | None = None,
    ) -> None:
        self._job_id = job_id
        self._client = client
        self._retry = retry
        self._wire = wire
        self._stats = stats
        self._limits = limits
        self.workers = limits.uploaders
        self._queue: asyncio.Queue[Outgoing | End] = asyncio.Queue(limits.upload_batch_chunks * 2)
        self._freed = freed  # None: freed pages stay with the allocator (tests, non-agent callers)
        self.in_flight = 0  # UploadChunks calls awaiting the gateway

    def depth(self) -> int:
        return self._queue.qsize()

    async def put(self, outgoing: Outgoing) -> None:
        await self._queue.put(outgoing)

    async def close(self) -> None:
        for _ in range(self.workers):
            await self._queue.put(END)

    async def run(self) -> None:
        limits = self._limits
        while True:
            groups, end = await take_batch(
                self._queue, limits.upload_batch_chunks, limits.upload_batch_bytes, lambda o: o.payload_bytes
            )
            if groups:
                requests = [r for o in groups for r in o.requests]
                upload = functools.partial(self._client.upload_chunks, requests)
                self.in_flight += 1
                try:
                    response = await self._retry.call("UploadChunks", upload)
                finally:
                    self.in_flight -= 1
                self._stats.chunks_new += response.chunks_stored
                self._stats.bytes_uploaded += sum(o.payload_bytes for o in groups)
                self._wire.release(sum(o.wire_charge for o in groups))
                # Trims count the raw content the batch stood for, as before ADR 0068: counted on the
                # smaller compressed bytes, trims came four times less often and peak RSS rose (ADR 0066).
                raw = sum(o.raw_bytes for o in groups)
                del groups, requests, upload  # the batch's buffers are free before the trim
                trim = self._freed.released(raw) if self._freed is not None else None
                if trim is not None:
                    await asyncio.to_thread(trim)
            if end:
                return


class Compressor:
    """Compresses groups of new chunks in the job's worker threads (one worker per thread) and passes them on.

    A compressed group waits for its place in the wire budget, then gives back its content budget:
    while uploads wait for the gateway, reading goes on as long as the compressed messages fit.
    """

    def __init__(
        self,
        *,
        job_id: str,
        executor: ThreadPoolExecutor,
        workers: int,
        limits: PipelineLimits,
        budget: ByteBudget,
        wire: ByteBudget,
        out: Uploader,
        freed: memory.FreedPages | None = None,
    ) -> None:
        self._job_id = job_id
        self._budget = budget
        self._wire = wire
        self._freed = freed  # None: no trims between steps (tests, non-agent callers)
        self._executor = executor
        self.workers = workers
        self._batch_bytes = limits.compress_batch_bytes
        self._message_bytes = limits.upload_message_bytes
        self._out = out
        self._queue: asyncio.Queue[list[Chunk] | End] = asyncio.Queue(limits.chunk_queue)
        self.in_flight = 0  # groups being compressed in a worker thread

    def depth(self) -> int:
        return self._queue.qsize()

    async def put(self, group: list[Chunk]) -> None:
        await self._queue.put(group)

    async def close(self) -> None:
        for _ in range(self.workers):
            await self._queue.put(END)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            groups, end = await take_batch(self._queue, 1 << 30, self._batch_bytes, _group_bytes)
            if groups:
                chunks = groups[0] if len(groups) == 1 else [c for g in groups for c in g]
                work = functools.partial(compress_group, self._job_id, chunks, self._message_bytes)
                self.in_flight += 1
                try:
                    outgoing = await loop.run_in_executor(self._executor, work)
                finally:
                    self.in_flight -= 1
                outgoing.wire_charge = await self._wire.acquire(outgoing.wire_bytes)
                self._budget.release(outgoing.charge)
                await self._out.put(outgoing)
                # The group's content copies are free now: above the ceiling, hand them back before more
                # are read (ADR 0077).
                trim = self._freed.over_ceiling() if self._freed is not None else None
                if trim is not None:
                    await asyncio.to_thread(trim)
            if end:
                return


class Deduper:
    """Asks the gateway which chunks it lacks; passes those on to compress and releases the others' budget.

    Chunks travel in groups (a read step's or a small-file group's), one queue
    operation each. Ids asked about once in this job (``SeenIds``) are not asked again.
    """

    def __init__(
        self,
        *,
        job_id: str,
        client: GatewayClient,
        retry: RetryPolicy,
        seen: SeenIds,
        budget: ByteBudget,
        limits: PipelineLimits,
        out: Compressor,
    ) -> None:
        self._job_id = job_id
        self._client = client
        self._retry = retry
        self._seen = seen
        self._budget = budget
        self._batch_ids = limits.dedup_batch_ids
        self._out = out
        self._queue: asyncio.Queue[list[Chunk] | End] = asyncio.Queue(limits.chunk_queue)

    def depth(self) -> int:
        return self._queue.qsize()

    async def put(self, group: list[Chunk]) -> None:
        await self._queue.put(group)

    async def close(self) -> None:
        await self._queue.put(END)

    async def run(self) -> None:
        end = False
        seen = self._seen
        while not end:
            # Up to about ``dedup_batch_ids`` ids per query (whole groups; the budget bounds their bytes).
            groups, end = await take_batch(self._queue, 1 << 30, self._batch_ids, len)
            query: dict[bytes, Chunk] = {}
            known = 0
            for group in groups:
                for chunk in group:
                    if chunk.id in seen or chunk.id in query:
                        known += chunk.charge
                    else:
                        query[chunk.id] = chunk
            if known:
                self._budget.release(known)
                known = 0
            if not query:
                continue
            ids = list(query)
            missing: set[bytes] = set()
            for start in range(0, len(ids), self._batch_ids):  # a group may take a batch past the bound
                find = functools.partial(
                    self._client.find_missing_chunks, self._job_id, ids[start : start + self._batch_ids]
                )
                missing.update(await self._retry.call("FindMissingChunks", find))
            new: list[Chunk] = []
            for cid, chunk in query.items():
                seen.add(cid)
                if cid in missing:
                    new.append(chunk)
                else:
                    known += chunk.charge
            if known:
                self._budget.release(known)
            if new:
                await self._out.put(new)
