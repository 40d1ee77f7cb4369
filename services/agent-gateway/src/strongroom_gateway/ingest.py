"""Chunk ingest: verify uploaded chunks and pack them into pack objects.

Chunks of one account accumulate in an open pack buffer, shared by all
concurrent uploads of that account. A pack is written when it reaches the
target size, and every UploadChunks call seals and waits for the packs holding
its chunks before it returns, so a committed point never references data that
is not durably stored. Chunk rows are inserted only after the pack object is
stored: a chunk row never points at a missing pack.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from strongroom.agent.v1 import gateway_pb2
from strongroom_platform.clock import Clock
from strongroom_platform.objectstore import ObjectStore
from strongroom_platform.telemetry import instruments

from strongroom_gateway import packfile, validation
from strongroom_gateway.agents import Identity
from strongroom_gateway.chunks import MAX_CHUNK_SIZE, PACK_COMPRESSION, ChunkRejected, UploadedPayload, verify_uploads
from strongroom_gateway.errors import InvalidArgument, NotFound
from strongroom_gateway.keys import AccountKeys
from strongroom_gateway.ports import ChunkLocation, GatewayStore, Pack
from strongroom_gateway.restrictions import job_in, require_job

log = logging.getLogger(__name__)

# Object Lock of new objects: the 30-day retention plus a day of margin for clock skew.
RETENTION = dt.timedelta(days=30)
LOCK_MARGIN = dt.timedelta(days=1)

# Chunks verified in one worker-thread call, then looked up in the database and handed to the
# packer, at a time: bounded in count and in bytes (a batch's payloads are held until then).
# The byte bound is the memory bound; the count bound only matters for small chunks, where each
# batch costs a thread hop and a dedup transaction: 1024 (was 128) is one of each for about a
# whole 4 MiB upload message of a tree of small files (ADR 0062).
_VERIFY_BATCH_CHUNKS = 1024
# 4 MiB (was 8): a batch is verified in a thread while the next is received (ADR 0066), so
# smaller batches leave less of a call's verification after its last message, and hold half as much.
_VERIFY_BATCH_BYTES = 4 << 20


def pack_key(account_id: str, pack_id: str) -> str:
    return f"packs/{account_id}/{pack_id[:2]}/{pack_id}"


@dataclass(eq=False)
class PendingPack:
    """A pack being filled, written or recorded by a ``PackWriter``; once ``done`` has succeeded,
    ``pack_id`` names the stored pack and ``placed`` tells whether every chunk row of its blobs names
    it (False when some blob was recorded first in another pack, e.g. by another gateway replica:
    the chunk table keeps the first location)."""

    account_id: str
    blobs: list[packfile.BlobToPack] = field(default_factory=list)
    size: int = 0
    sealed: bool = False
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    pack_id: str = ""
    placed: bool = False


class PackWriter:
    """Per-account open pack buffers, flushed by size or by the uploads that wait for them.

    Args:
        keys: the accounts' data keys; every pack is encrypted with its account's key.
        target_bytes: a pack is sealed once its blobs reach this size.
        max_concurrent_writes: object-store writes at a time; also the number of
            sealed packs waiting to be written before uploads are held back.
    """

    def __init__(
        self,
        store: GatewayStore,
        object_store: ObjectStore,
        clock: Clock,
        *,
        keys: AccountKeys,
        target_bytes: int = 16 << 20,
        max_concurrent_writes: int = 8,
    ) -> None:
        self._store = store
        self._objects = object_store
        self._clock = clock
        self.keys = keys
        self._target = target_bytes
        self._open: dict[str, PendingPack] = {}
        # Chunks in an open or not yet recorded pack, per account: never buffered twice.
        self._pending_ids: dict[str, dict[bytes, PendingPack]] = {}
        self.write_slots = asyncio.Semaphore(max_concurrent_writes)
        self._buffer_slots = asyncio.Semaphore(max_concurrent_writes)
        self._tasks: set[asyncio.Task[None]] = set()

    async def add(self, account_id: str, blob: packfile.BlobToPack) -> tuple[PendingPack, bool]:
        """Buffer a verified blob; return the pack that will hold it and whether it was new.

        Once ``flush`` returns, the pack's ``pack_id`` names where the blob was stored and recorded,
        unless ``placed`` is False (some blob of it had been recorded in another pack first).
        """
        pending = self._pending_ids.setdefault(account_id, {})
        holder = pending.get(blob.chunk_id)
        if holder is not None:
            return holder, False
        pack = self._open.get(account_id)
        if pack is None:
            pack = self._open[account_id] = PendingPack(account_id)
            # Nobody may await a pack whose upload failed midway; do not warn then.
            pack.done.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        pack.blobs.append(blob)
        pack.size += len(blob.payload)
        pending[blob.chunk_id] = pack
        if pack.size >= self._target:
            await self._seal(pack)
        return pack, True

    async def flush(self, packs: set[PendingPack]) -> None:
        """Seal ``packs`` if still open and wait until all are stored and recorded (raises their error)."""
        for pack in packs:
            if not pack.sealed:
                await self._seal(pack)
        for pack in packs:
            await asyncio.shield(pack.done)

    async def close(self) -> None:
        """Write every open pack and wait for all writes (graceful shutdown)."""
        for pack in list(self._open.values()):
            await self._seal(pack)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _seal(self, pack: PendingPack) -> None:
        if pack.sealed:
            return
        # Backpressure: the caller (an upload stream) waits while too many packs are in flight.
        # Only then is the pack sealed: a caller cancelled while waiting (its deadline passed on a
        # stalled gateway) leaves it open, for the next upload or flush to seal. Sealed first, it
        # was never written and held its chunks for good: every retry of them waited on it.
        await self._buffer_slots.acquire()
        if pack.sealed:  # another caller sealed it meanwhile
            self._buffer_slots.release()
            return
        pack.sealed = True
        if self._open.get(pack.account_id) is pack:
            del self._open[pack.account_id]
        task = asyncio.create_task(self._write(pack), name=f"pack-write-{pack.account_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, pack: PendingPack) -> None:
        try:
            data_key = await self.keys.data_key(pack.account_id)
            # Encryption (AES-GCM) and hashing release the GIL: off the event loop, in parallel.
            encoded = await asyncio.to_thread(packfile.encode_pack, pack.blobs, data_key)
            key = pack_key(pack.account_id, encoded.pack_id)
            now = self._clock.now()
            retain_until = now + RETENTION + LOCK_MARGIN
            # The key that opens the pack stays in the vault at least as long (ADR 0032).
            await self.keys.keep_locked(pack.account_id, retain_until)
            async with self.write_slots:
                # The key is the SHA-256 of bytes with fresh random nonces in them: never written before.
                version_id = await self._objects.put(key, encoded.data, retain_until=retain_until, new_key=True)
            instruments().stored.add(len(encoded.data))
            record = Pack(
                encoded.pack_id,
                pack.account_id,
                key,
                len(encoded.data),
                now,
                retain_until,
                encoded.format_version,
                version_id,
            )
            rows = [
                ChunkLocation(
                    e.chunk_id,
                    encoded.pack_id,
                    key,
                    e.offset,
                    e.length,
                    e.raw_length,
                    e.compression,
                    encoded.format_version,
                    version_id,
                )
                for e in encoded.entries
            ]
            async with self._store.transaction() as tx:
                inserted = await tx.insert_pack(record, rows)
            # Set before ``done``: who waited for the pack reads where its blobs were recorded.
            pack.pack_id, pack.placed = encoded.pack_id, inserted == len(rows)
            pack.done.set_result(None)
        except BaseException as exc:
            log.warning("writing a pack of account %s failed: %s", pack.account_id, exc)
            if not pack.done.done():
                pack.done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("pack write cancelled"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._buffer_slots.release()
            pending = self._pending_ids.get(pack.account_id, {})
            for blob in pack.blobs:
                if pending.get(blob.chunk_id) is pack:
                    del pending[blob.chunk_id]


def _uploaded_chunks(request: gateway_pb2.UploadChunkRequest) -> list[UploadedPayload]:
    """The chunks one stream message carries (either form, see UploadChunkRequest); InvalidArgument if malformed."""
    if request.chunks:
        if request.chunk_id:
            raise InvalidArgument("a message carries its chunks in `chunks` or in fields 2-5, not both")
        forms: Iterable[gateway_pb2.UploadedChunk | gateway_pb2.UploadChunkRequest] = request.chunks
    else:
        forms = (request,)
    out = []
    for number, chunk in enumerate(forms):
        validation.chunk_id(f"chunks[{number}].chunk_id" if request.chunks else "chunk_id", chunk.chunk_id)
        compression = PACK_COMPRESSION.get(chunk.compression)
        if compression is None:
            raise InvalidArgument(f"chunk {chunk.chunk_id.hex()}: compression must be NONE or ZSTD")
        payload = chunk.payload  # each read of a bytes field copies it out of the message
        if len(payload) > MAX_CHUNK_SIZE + (64 << 10):
            raise InvalidArgument(f"chunk {chunk.chunk_id.hex()}: payload larger than any chunk may be")
        out.append(UploadedPayload(chunk.chunk_id, compression, chunk.raw_length, payload))
    return out


class _CallIngest:
    """One UploadChunks call's state: the batch being received, the one being verified, the packs to wait for.

    Chunks are verified in batches (``_VERIFY_BATCH_CHUNKS`` / ``_VERIFY_BATCH_BYTES``), one
    worker-thread call per batch, while the next batch is received (ADR 0066): at most two batches
    of a call are held, one of them in verification. A batch's verified chunks are looked up and
    buffered in order, before the next batch's verification starts.
    """

    def __init__(self, account_id: str, chunk_id_key: bytes, store: GatewayStore, writer: PackWriter) -> None:
        self._account_id = account_id
        self._key = chunk_id_key
        self._store = store
        self._writer = writer
        self.packs: set[PendingPack] = set()
        self.response = gateway_pb2.UploadChunksResponse()
        self._batch: list[UploadedPayload] = []
        self._batch_bytes = 0
        self._verifying: tuple[list[UploadedPayload], asyncio.Future[tuple[int, ChunkRejected | None]]] | None = None

    async def add(self, chunk: UploadedPayload) -> None:
        self._batch.append(chunk)
        self._batch_bytes += len(chunk.payload)
        if len(self._batch) >= _VERIFY_BATCH_CHUNKS or self._batch_bytes >= _VERIFY_BATCH_BYTES:
            await self._verify_batch()

    async def finish(self) -> None:
        """Verify and buffer every chunk received so far (the call's end, or before a malformed message).

        Raises InvalidArgument for the first refused chunk, the chunks before it kept.
        """
        await self._verify_batch()
        await self._settle()

    async def _verify_batch(self) -> None:
        """Settle the batch before, then start verifying the one received so far."""
        await self._settle()
        if not self._batch:
            return
        verification = asyncio.ensure_future(asyncio.to_thread(verify_uploads, self._key, self._batch))
        self._verifying = (self._batch, verification)
        self._batch, self._batch_bytes = [], 0

    async def _settle(self) -> None:
        """Wait for the batch in verification, then buffer the chunks that passed; raise for the first refused one."""
        if self._verifying is None:
            return
        batch, verification = self._verifying
        self._verifying = None
        passed, refusal = await verification
        verified = batch[:passed]
        existing = await _existing(self._store, self._account_id, [c.chunk_id for c in verified])
        response = self.response
        for chunk in verified:
            if chunk.chunk_id in existing:
                response.chunks_already_present += 1
                continue
            blob = packfile.BlobToPack(chunk.chunk_id, chunk.compression, chunk.payload, chunk.raw_length)
            pack, new = await self._writer.add(self._account_id, blob)
            self.packs.add(pack)
            if new:
                response.chunks_stored += 1
                response.bytes_stored += len(blob.payload)
            else:
                response.chunks_already_present += 1
        if refusal is not None:
            raise InvalidArgument(f"chunk {batch[passed].chunk_id.hex()} refused: {refusal}")

    def abandon(self) -> None:
        """The call failed: a verification still running in a thread cannot be stopped, its outcome is dropped."""
        if self._verifying is not None:
            self._verifying[1].add_done_callback(lambda f: None if f.cancelled() else f.exception())
            self._verifying = None


async def upload_chunks(
    identity: Identity,
    requests: AsyncIterator[gateway_pb2.UploadChunkRequest],
    *,
    store: GatewayStore,
    writer: PackWriter,
) -> gateway_pb2.UploadChunksResponse:
    """Verify each chunk against the account's key and store the new ones in packs.

    A chunk whose content does not hash to its id is refused (InvalidArgument)
    and never stored; chunks before it in the same call are kept. Verification
    runs in batches in a worker thread, overlapping the receipt of the next
    batch (``_CallIngest``).
    """
    stream = aiter(requests)
    first = await anext(stream, None)
    # The account and the first message's job in one transaction: four round trips to PostgreSQL
    # each, on the event loop, for every call (ADR 0079).
    async with store.transaction() as tx:
        account = await tx.get_account(identity.account_id)
        if account is not None and first is not None:
            await job_in(tx, identity, first.job_id, "backup")
    if account is None:
        raise NotFound(f"account {identity.account_id!r} is unknown to the gateway")
    jobs_checked: set[str] = set() if first is None else {first.job_id}
    call = _CallIngest(identity.account_id, account.chunk_id_key, store, writer)
    try:
        request = first
        while request is not None:
            if request.job_id not in jobs_checked:
                await require_job(identity, request.job_id, "backup", store=store)
                jobs_checked.add(request.job_id)
            try:
                chunks = _uploaded_chunks(request)
            except InvalidArgument:
                await call.finish()  # the chunks before the malformed message are kept
                raise
            for chunk in chunks:
                await call.add(chunk)
            request = await anext(stream, None)
        await call.finish()
    except BaseException:
        call.abandon()
        # Also on refusal: chunks already accepted are written rather than left in a buffer.
        with contextlib.suppress(Exception):
            await writer.flush(call.packs)
        raise
    await writer.flush(call.packs)
    return call.response


async def _existing(store: GatewayStore, account_id: str, chunk_ids: list[bytes]) -> set[bytes]:
    if not chunk_ids:
        return set()
    async with store.transaction() as tx:
        return set(await tx.find_chunks(account_id, chunk_ids))
