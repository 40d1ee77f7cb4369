"""ReadChunks: stream a restore's chunks, verified, in request order.

Contract: for a restore job of the caller; reads are planned by ``planning``, fetched with at
most ``RANGES_IN_FLIGHT`` ranges at a time, opened by ``opening`` on a small thread pool, and sent
in runs of bounded size while the next window is read ahead. Damage is answered per chunk when
the request tolerates it, else the call fails (ADR 0030).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from strongroom.agent.v1 import gateway_pb2
from strongroom_platform.manifest import encode_uvarint
from strongroom_platform.objectstore import ObjectNotFound, ObjectStore

from strongroom_gateway import validation
from strongroom_gateway.agents import Identity
from strongroom_gateway.chunks import CHUNK_ID_SIZE
from strongroom_gateway.errors import FailedPrecondition, InvalidArgument, NotFound
from strongroom_gateway.keys import AccountKeys
from strongroom_gateway.points.opening import OpenedChunk, damaged, open_range
from strongroom_gateway.points.planning import (
    COALESCE_GAP,
    MAX_RANGE_BYTES,
    READ_WINDOW_BYTES,
    ReadRange,
    ReadWindow,
    plan_reads,
)
from strongroom_gateway.points.restore import restore_point
from strongroom_gateway.ports import GatewayStore

log = logging.getLogger(__name__)

# ReadChunks: ids per request (a restore batch of many small files), and how reads are planned.
MAX_READ_IDS_PER_REQUEST = 20_000
RANGES_IN_FLIGHT = 4
# ReadChunksRequest.max_message_bytes is lowered to this: small enough for any agent's receive limit,
# large enough that the per-message cost of gRPC is spread over hundreds of small chunks.
MAX_READ_MESSAGE_BYTES = 4 << 20
VERIFY_THREADS = 2

_verify_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _verify_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The small pool that opens and verifies served chunks (created on first use, shared by all reads)."""
    global _verify_executor
    if _verify_executor is None:
        _verify_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=VERIFY_THREADS, thread_name_prefix="read-verify"
        )
    return _verify_executor


async def read_chunks(
    identity: Identity,
    request: gateway_pb2.ReadChunksRequest,
    *,
    store: GatewayStore,
    object_store: ObjectStore,
    keys: AccountKeys,
) -> AsyncIterator[bytes]:
    """Stream the requested chunks of the agent's account, verified, in request order (every occurrence).

    One chunk per message in the response's own fields, or, when the request
    sets ``max_message_bytes``, runs of consecutive positions in ``chunks`` (at
    most ``MAX_READ_MESSAGE_BYTES``; see ``_serve_windows``). Reads are planned
    per window of the request (``plan_reads``): each distinct chunk of a window
    is read once, nearby blobs of a pack in one ranged GET;
    at most ``RANGES_IN_FLIGHT`` ranges are fetched and verified at a time, and
    at most two windows of content are held (the one being sent and the next).

    Each message is yielded serialized (``encode_chunks_message``): the servicer's method is
    registered with a pass-through serializer (``grpc_api.register``).

    Damage (ADR 0030): a chunk that is not stored for the account, whose pack
    range cannot be read (``ObjectNotFound``, short) or whose blob does not
    open or verify is answered with ``ServedChunk.damage`` when the request sets
    ``tolerate_damage`` (and ``max_message_bytes``), and the read goes on.
    Otherwise the call fails as it always did: NOT_FOUND for unknown ids
    before anything is sent, FAILED_PRECONDITION at the first damaged chunk.
    """
    ids = [bytes(c) for c in request.chunk_ids]
    if len(ids) > MAX_READ_IDS_PER_REQUEST:
        raise InvalidArgument(f"at most {MAX_READ_IDS_PER_REQUEST} chunk ids per request, got {len(ids)}")
    validation.chunk_ids("chunk_ids", ids)
    await restore_point(identity, request.restore_job_id, "", store, field="restore_job_id")
    async with store.transaction() as tx:
        account = await tx.get_account(identity.account_id)
        locations = await tx.find_chunks(identity.account_id, ids)
    assert account is not None
    data_key = await keys.data_key(identity.account_id)
    message_bytes = min(request.max_message_bytes, MAX_READ_MESSAGE_BYTES)
    tolerant = request.tolerate_damage and message_bytes > 0
    unknown = [c for c in dict.fromkeys(ids) if c not in locations]
    if unknown and not tolerant:
        hexes = ", ".join(c.hex() for c in unknown[:5])
        raise NotFound(f"{len(unknown)} chunks are not stored for this account: {hexes}")
    missing = {c: damaged(c, 0, "it is not stored for this account") for c in unknown}

    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(RANGES_IN_FLIGHT)

    open_fetched = functools.partial(open_range, account.chunk_id_key, data_key, compressed=request.accept_compressed)

    async def fetch(read: ReadRange) -> dict[bytes, OpenedChunk]:
        # The slot covers the GET and the verification, so fetched-but-unverified bytes stay bounded too.
        async with slots:
            try:
                data = await object_store.get(
                    read.object_key, offset=read.offset, length=read.length, version_id=read.version_id
                )
            except ObjectNotFound:
                # Only a missing object (or pinned version) is damage; any other store failure fails the call.
                return {
                    b.chunk_id: damaged(b.chunk_id, b.raw_length, "its pack is missing from storage")
                    for b in read.blobs
                }
            return await loop.run_in_executor(_verify_pool(), open_fetched, read, data)

    windows = plan_reads(
        ids, locations, window_bytes=READ_WINDOW_BYTES, max_gap=COALESCE_GAP, max_bytes=MAX_RANGE_BYTES
    )
    async for run in _serve_windows(ids, windows, fetch, message_bytes, missing):
        if not tolerant:
            for c in run:
                if c.damage:
                    log.warning("stored chunk %s cannot be served: %s", c.chunk_id.hex(), c.damage)
                    raise FailedPrecondition(f"stored chunk {c.chunk_id.hex()} is corrupt: {c.damage}")
        if not message_bytes:  # an agent that predates max_message_bytes: the response's own fields
            [c] = run
            yield b"".join(_chunk_fields(c))
            continue
        for c in run:
            if c.damage:
                log.warning("stored chunk %s cannot be served: %s", c.chunk_id.hex(), c.damage)
        yield encode_chunks_message(run)


def encode_chunks_message(run: Sequence[OpenedChunk]) -> bytes:
    """The serialized ``ReadChunksResponse`` holding ``run`` in ``chunks`` (field 5), byte for byte what
    protobuf writes, with each chunk's data copied once (into the joined message). Building the
    message and serializing it copied every chunk twice and cost 2-5 times the CPU (ADR 0069)."""
    parts: list[bytes] = []
    for c in run:
        fields = _chunk_fields(c)
        parts.append(_CHUNKS_TAG + encode_uvarint(sum(len(f) for f in fields)))
        parts += fields
    return b"".join(parts)


def _chunk_fields(c: OpenedChunk) -> list[bytes]:
    """The fields of a ``ServedChunk`` (the same numbers as ``ReadChunksResponse``'s own 1-4), in field
    order, proto3 defaults left out."""
    head = b"\x0a" + encode_uvarint(len(c.chunk_id)) + c.chunk_id
    if c.damage:
        damage = c.damage.encode()
        return [head + b"\x2a" + encode_uvarint(len(damage)) + damage]
    tail = (b"\x18" + encode_uvarint(c.compression) if c.compression else b"") + (
        b"\x20" + encode_uvarint(c.raw_length) if c.raw_length else b""
    )
    if not c.data:
        return [head + tail]
    return [head + b"\x12" + encode_uvarint(len(c.data)), c.data, tail]


_CHUNKS_TAG = b"\x2a"  # ReadChunksResponse.chunks: field 5, length-delimited


_Fetch = Callable[[ReadRange], Coroutine[Any, Any, dict[bytes, OpenedChunk]]]
# What a chunk adds to a message beyond its data: the id and the field tags and lengths.
_CHUNK_OVERHEAD = CHUNK_ID_SIZE + 16


async def _serve_windows(
    ids: Sequence[bytes],
    windows: Sequence[ReadWindow],
    fetch: _Fetch,
    message_bytes: int = 0,
    missing: dict[bytes, OpenedChunk] | None = None,
) -> AsyncIterator[list[OpenedChunk]]:
    """Send every position in order, in runs; the next window's ranges are fetched while the current one is sent.

    A run holds consecutive positions of at most ``message_bytes`` (data plus
    ``_CHUNK_OVERHEAD`` each); a single larger chunk, and every chunk when
    ``message_bytes`` is 0, is a run of its own. A run is sent as soon as the
    next position's chunk is not read yet: the agent gets what is ready rather
    than waiting for a full message. ``missing``: the answers for ids that have
    no location (not read; ``plan_reads`` leaves them out).
    """
    missing = missing or {}

    def start(window: ReadWindow) -> dict[bytes, asyncio.Task[dict[bytes, OpenedChunk]]]:
        by_chunk: dict[bytes, asyncio.Task[dict[bytes, OpenedChunk]]] = {}
        for read in window.ranges:  # in need order: the semaphore serves waiters first come, first served
            task = asyncio.create_task(fetch(read))
            for blob in read.blobs:
                by_chunk[blob.chunk_id] = task
        return by_chunk

    # the window being sent, then the next
    held: list[dict[bytes, asyncio.Task[dict[bytes, OpenedChunk]]]] = []
    run: list[OpenedChunk] = []
    run_bytes = 0
    try:
        for number, window in enumerate(windows):
            if not held:
                held.append(start(window))
            if number + 1 < len(windows):
                held.append(start(windows[number + 1]))  # read ahead while this window is sent
            for position in range(window.start, window.end):
                cid = ids[position]
                task = held[0].get(cid)
                if task is None:
                    chunk = missing[cid]
                else:
                    if run and not task.done():
                        yield run
                        run, run_bytes = [], 0
                    chunk = (await task)[cid]
                size = len(chunk.data) + _CHUNK_OVERHEAD
                if run and run_bytes + size > message_bytes:
                    yield run
                    run, run_bytes = [], 0
                run.append(chunk)
                run_bytes += size
            held.pop(0)
        if run:
            yield run
    finally:
        _abandon(held)


def _abandon(held: Sequence[dict[bytes, asyncio.Task[dict[bytes, OpenedChunk]]]]) -> None:
    """Cancel the fetches of windows no longer needed (a finished or abandoned read)."""
    tasks = [task for by_chunk in held for task in by_chunk.values()]
    for task in tasks:
        task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a failed read of an abandoned window is not an error to log
