"""Backup points: chunk lookup, committing a point's manifest, and the restore reads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import Any, NamedTuple

from strongroom.agent.v1 import gateway_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import Clock
from strongroom_platform.events import POINT_CREATED, new_meta, to_timestamp
from strongroom_platform.manifest import ManifestFormatError, decode_manifest
from strongroom_platform.objectstore import ObjectNotFound, ObjectStore
from strongroom_platform.threads import WorkerThreads

from strongroom_gateway import filesystems, manifests, validation
from strongroom_gateway.agents import Identity
from strongroom_gateway.chunks import CHUNK_ID_SIZE, PROTO_COMPRESSION, ChunkRejected, verify_payload
from strongroom_gateway.crypto import DataKey
from strongroom_gateway.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from strongroom_gateway.ingest import LOCK_MARGIN, RETENTION
from strongroom_gateway.jobs import PRODUCER
from strongroom_gateway.keys import AccountKeys
from strongroom_gateway.packfile import ENCRYPTED_VERSIONS, PackFormatError, open_blob
from strongroom_gateway.ports import ChunkLocation, GatewayStore, GatewayTx, Pack, Point
from strongroom_gateway.restrictions import require_job
from strongroom_gateway.synthesis import BuiltManifest, SortedSpool, build_manifest, merge_entries
from strongroom_gateway.vault import Vault

log = logging.getLogger(__name__)

MAX_IDS_PER_REQUEST = 10_000
# ReadChunks: ids per request (a restore batch of many small files), and how reads are planned.
MAX_READ_IDS_PER_REQUEST = 20_000
# Blobs of one pack at most this far apart are read with one ranged GET (the gap is read and dropped).
COALESCE_GAP = 1 << 20
# A coalesced range stops growing here (a pack is 16 MiB; a larger single blob is read alone).
MAX_RANGE_BYTES = 8 << 20
# Distinct content per read window; two windows are held at most (the one being sent, the next one).
READ_WINDOW_BYTES = 16 << 20
RANGES_IN_FLIGHT = 4
# ReadChunksRequest.max_message_bytes is lowered to this: small enough for any agent's receive limit,
# large enough that the per-message cost of gRPC is spread over hundreds of small chunks.
MAX_READ_MESSAGE_BYTES = 4 << 20
VERIFY_THREADS = 2
# Commits building their manifest at once (threads of their own, see _build_threads).
BUILD_THREADS = 4
MANIFEST_BATCH = 1_000
# Packs whose lock ends sooner than this after a commit get their lock extended.
LOCK_EXTENSION_SLACK = RETENTION + LOCK_MARGIN / 2


def manifest_key(account_id: str, point_id: str) -> str:
    return f"manifests/{account_id}/{point_id}"


async def find_missing_chunks(
    identity: Identity, request: gateway_pb2.FindMissingChunksRequest, *, store: GatewayStore
) -> gateway_pb2.FindMissingChunksResponse:
    """The requested ids this agent's account does not hold (other accounts are never consulted)."""
    ids = [bytes(c) for c in request.chunk_ids]
    if len(ids) > MAX_IDS_PER_REQUEST:
        raise InvalidArgument(f"at most {MAX_IDS_PER_REQUEST} chunk ids per request, got {len(ids)}")
    validation.chunk_ids("chunk_ids", ids)
    await require_job(identity, request.job_id, "backup", store=store)
    async with store.transaction() as tx:
        present = await tx.find_chunks(identity.account_id, ids)
    missing: list[bytes] = []
    seen: set[bytes] = set()
    for cid in ids:
        if cid not in present and cid not in seen:
            missing.append(cid)
            seen.add(cid)
    return gateway_pb2.FindMissingChunksResponse(missing_chunk_ids=missing)


async def commit_point(
    identity: Identity,
    requests: AsyncIterator[gateway_pb2.CommitPointRequest],
    *,
    store: GatewayStore,
    object_store: ObjectStore,
    clock: Clock,
    write_slots: asyncio.Semaphore,
    keys: AccountKeys,
    vault: Vault,
) -> gateway_pb2.CommitPointResponse:
    """Validate the entries, write the manifest (locked), record the point and emit point-created.

    The point's disaster-recovery record (``vault``) is written before the point is recorded, and
    the account's key record and the instance's record are locked at least as long as the point.

    With ``base_point_id`` the manifest is synthesized: the base point's entries
    minus the deleted paths, plus the new and changed entries (``synthesis``),
    in bounded memory. The base must be a point of the same instance, account
    and mount point (else FAILED_PRECONDITION, and the agent sends everything).

    Committing the same filesystem of a job again returns the existing point
    (a retry after a lost response).
    """
    timing = _Stopwatch()
    first = await anext(aiter(requests), None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgument("the first CommitPoint message must be the header")
    header = first.header
    validation.point_header(header)
    job = await require_job(identity, header.job_id, "backup", store=store)
    filesystem = header.filesystem
    # Before anything is read or written: restores to the "original location" trust this mount point.
    roots = gateway_pb2.AgentCommand.FromString(job.command).run_backup.roots
    await filesystems.require_approved(store, identity.instance_id, filesystem.mount_point, job_roots=roots)
    base = await _base_point(identity, header, store) if header.base_point_id else None
    changes = SortedSpool()
    deleted = SortedSpool()
    try:
        await _receive(requests, changes, deleted, has_base=base is not None)
        timing.lap("receive")

        async with store.transaction() as tx:
            existing = await tx.find_point(job.job_id, filesystem.mount_point)
        if existing is not None:
            return _response(existing)

        base_manifest = await _read_base(base, object_store, keys) if base is not None else None
        # Before any chunk is located: the moves this commit may miss are those of a later epoch
        # (ADR 0057); the point then references their new packs too.
        async with store.transaction() as tx:
            epoch = await tx.gc_epoch(identity.account_id)
        loop = asyncio.get_running_loop()

        def locate(ids: list[bytes]) -> concurrent.futures.Future[tuple[set[str], list[bytes]]]:
            return asyncio.run_coroutine_threadsafe(_chunk_packs(store, identity.account_id, ids), loop)

        def build() -> BuiltManifest:
            base_entries = decode_manifest(base_manifest) if base_manifest is not None else iter(())
            if base_manifest is not None and not changes.count and not deleted.count:
                # Nothing changed (the daily case of an idle server): the base's manifest is this
                # point's manifest; only the chunk references are checked again.
                return build_manifest(base_entries, locate, encoded=base_manifest)
            return build_manifest(merge_entries(base_entries, changes.sorted(), deleted.sorted()), locate)

        timing.lap("read base")
        try:
            built = await _build_threads().run(build)
        except ManifestFormatError as exc:
            raise FailedPrecondition(f"the base point's manifest cannot be read: {exc}") from None
    finally:
        sent, removed = changes.count, deleted.count
        changes.close()
        deleted.close()
    if base is not None and built.entry_count != header.entry_count:
        raise FailedPrecondition(
            f"the point synthesized from base {base.point_id!r} has {built.entry_count} entries, the agent"
            f" counted {header.entry_count}; send a full manifest"
        )

    timing.lap("synthesis")
    now = clock.now()
    retain_until = now + RETENTION + LOCK_MARGIN
    await vault.keep_for_point(identity.account_id, identity.instance_id, retain_until)
    await _extend_pack_locks(identity.account_id, built.packs, now, store, object_store, write_slots)
    timing.lap("pack locks")
    point_id = str(uuid.uuid4())
    key = manifest_key(identity.account_id, point_id)
    data = built.data
    data = await manifests.seal(keys, account_id=identity.account_id, point_id=point_id, manifest=data)
    async with write_slots:
        manifest_version_id = await object_store.put(key, data, retain_until=retain_until)
    timing.lap("manifest write")

    file_count, total_bytes = built.file_count, built.total_bytes

    def relocate() -> set[str]:
        return build_manifest(decode_manifest(built.data), locate, encoded=built.data).packs

    packs = set(built.packs)
    for _ in range(_RELOCATE_ATTEMPTS):
        try:
            async with store.transaction() as tx:
                current = await tx.get_job(job.job_id, for_update=True)
                if current is None or current.state == "finished" or current.cancel_requested:
                    raise FailedPrecondition(f"backup job {job.job_id!r} finished or was canceled during the commit")
                raced = await tx.find_point(job.job_id, filesystem.mount_point)
                if raced is not None:
                    return _response(raced)
                if current.version_id is None:
                    current = dataclasses.replace(current, version_id=str(uuid.uuid4()), version_created_at=now)
                    await tx.update_job(current)
                assert current.version_id is not None and current.version_created_at is not None
                instance = await tx.get_instance(identity.instance_id)
                # Held until commit: collection cannot reclaim these packs now; one reclaimed since the
                # chunks were located fails the commit rather than record a point missing data (ADR 0041).
                await _refuse_moved(tx, identity.account_id, packs, epoch)
                await _refuse_reclaimed(tx, identity.account_id, packs)
                point = Point(
                    point_id=point_id,
                    account_id=identity.account_id,
                    instance_id=identity.instance_id,
                    job_id=job.job_id,
                    version_id=current.version_id,
                    mount_point=filesystem.mount_point,
                    filesystem=filesystem.SerializeToString(),
                    manifest_key=key,
                    file_count=file_count,
                    total_bytes=total_bytes,
                    created_at=now,
                    retain_until=retain_until,
                    manifest_version_id=manifest_version_id,
                )
                # Inside the transaction, holding the job's row: a record whose transaction then fails
                # names a complete, readable point (a rebuild restores it; ADR 0032).
                await vault.write_point(point, current.version_created_at)
                await tx.insert_point(point)
                await tx.record_point_packs(point_id, sorted(packs))
                await tx.enqueue(
                    POINT_CREATED,
                    identity.instance_id,
                    events_pb2.PointCreated(
                        meta=new_meta(PRODUCER, now),
                        account_id=identity.account_id,
                        instance_id=identity.instance_id,
                        job_id=job.job_id,
                        version_id=current.version_id,
                        point_id=point_id,
                        filesystem=filesystem,
                        version_created_at=to_timestamp(current.version_created_at),
                        manifest_key=key,
                        file_count=file_count,
                        total_bytes=total_bytes,
                        retain_until=to_timestamp(retain_until),
                        instance_capacity_bytes=instance.capacity_bytes if instance is not None else 0,
                    ),
                )
            break
        except _Moved:
            # Garbage collection moved chunks out of this point's packs since they were located (it
            # does not wait for running backups, ADR 0057): locate them again, lock their packs as
            # long as the point (ADR 0010), and record where they are now.
            async with store.transaction() as tx:
                epoch = await tx.gc_epoch(identity.account_id)
            packs = await asyncio.to_thread(relocate)
            await _extend_pack_locks(identity.account_id, packs, now, store, object_store, write_slots)
            log.info("job %s: chunks moved during the commit; located again in %d packs", job.job_id, len(packs))
    else:
        raise FailedPrecondition("packs of this point kept moving while it was committed; run the backup again")
    timing.lap("record")
    log.info(
        "job %s: committed point %s of %s: %d entries (%d sent, %d deleted, base %s) in %.2f s (%s)",
        job.job_id,
        point_id,
        filesystem.mount_point,
        built.entry_count,
        sent,
        removed,
        base.point_id if base is not None else "none",
        timing.total(),
        timing,
    )
    return _response(point)


class _Stopwatch:
    """Durations of the consecutive phases of a call, for its log line."""

    def __init__(self) -> None:
        self._started = self._last = time.perf_counter()
        self._laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        """End the phase ``name`` now."""
        now = time.perf_counter()
        self._laps.append((name, now - self._last))
        self._last = now

    def total(self) -> float:
        return time.perf_counter() - self._started

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self._laps)


async def _receive(
    requests: AsyncIterator[gateway_pb2.CommitPointRequest],
    changes: SortedSpool,
    deleted: SortedSpool,
    *,
    has_base: bool,
) -> None:
    """Validate the entry batches and spool entries and deleted paths (any order; sorted on reading)."""
    async for request in requests:
        if request.WhichOneof("part") != "entries":
            raise InvalidArgument("only entry batches may follow the header")
        if request.entries.deleted_paths and not has_base:
            raise InvalidArgument("deleted_paths need a base point (PointHeader.base_point_id)")
        # The whole batch before any of it is spooled: the field names count across the stream.
        validation.entry_batch(request.entries, changes.count, deleted.count)
        for entry in request.entries.entries:
            changes.add(entry.path.encode(), entry.SerializeToString())
        for path in request.entries.deleted_paths:
            deleted.add(path.encode(), b"")


async def _base_point(identity: Identity, header: gateway_pb2.PointHeader, store: GatewayStore) -> Point:
    async with store.transaction() as tx:
        base = await tx.get_point(header.base_point_id)
    if base is None or base.account_id != identity.account_id or base.instance_id != identity.instance_id:
        raise FailedPrecondition(
            f"base point {header.base_point_id!r} is not a point of this instance; send a full manifest"
        )
    if base.mount_point != header.filesystem.mount_point:
        raise FailedPrecondition(
            f"base point {header.base_point_id!r} is of {base.mount_point!r}, not {header.filesystem.mount_point!r}"
        )
    return base


async def _read_base(base: Point, object_store: ObjectStore, keys: AccountKeys) -> bytes:
    """The base point's manifest bytes (opened if sealed); decoded piece by piece in the synthesis thread."""
    try:
        return await manifests.read_point_manifest(object_store, keys, base)
    except (ObjectNotFound, ManifestFormatError) as exc:
        raise FailedPrecondition(
            f"the manifest of base point {base.point_id!r} cannot be read ({exc}); send a full manifest"
        ) from None


def _response(point: Point) -> gateway_pb2.CommitPointResponse:
    return gateway_pb2.CommitPointResponse(
        point_id=point.point_id, file_count=point.file_count, total_bytes=point.total_bytes
    )


async def _chunk_packs(
    store: GatewayStore, account_id: str, chunk_ids: Sequence[bytes]
) -> tuple[set[str], list[bytes]]:
    async with store.transaction() as tx:
        return await tx.chunk_packs(account_id, chunk_ids)


async def _extend_pack_locks(
    account_id: str,
    referenced_packs: Iterable[str],
    now: dt.datetime,
    store: GatewayStore,
    object_store: ObjectStore,
    write_slots: asyncio.Semaphore,
) -> None:
    """Keep every pack a new point references locked at least as long as the point.

    Packs written within the last half day are locked long enough already; older
    packs deduplicated into this point get their Object Lock moved later.
    """
    pack_ids = sorted(set(referenced_packs))
    if not pack_ids:
        return
    async with store.transaction() as tx:
        await _refuse_reclaimed(tx, account_id, pack_ids)
        stale = await tx.packs_locked_before(account_id, pack_ids, now + LOCK_EXTENSION_SLACK)
    retain_until = now + RETENTION + LOCK_MARGIN

    async def extend(pack: Pack) -> None:
        # The version the pack was written as: a later object on the key must not take its lock.
        async with write_slots:
            await object_store.extend_retention(pack.object_key, retain_until, version_id=pack.version_id)

    await asyncio.gather(*(extend(p) for p in stale))
    if stale:
        async with store.transaction() as tx:
            for pack in stale:
                await tx.set_pack_retention(pack.pack_id, retain_until)


_RELOCATE_ATTEMPTS = 4


class _Moved(Exception):
    """Leave the commit's transaction: chunks of the point's packs moved since they were located."""


async def _refuse_moved(tx: GatewayTx, account_id: str, packs: set[str], epoch: int) -> None:
    """:class:`_Moved` when a move or repack of a later epoch than ``epoch`` took chunks out of one
    of ``packs`` (ADR 0057). Holds the shared collection lock from here to the end of the transaction."""
    if await tx.gc_epoch(account_id) == epoch:  # takes the shared lock; no move of the account since
        return
    if await tx.pack_successors(account_id, sorted(packs), epoch):
        raise _Moved


async def _refuse_reclaimed(tx: GatewayTx, account_id: str, pack_ids: Iterable[str]) -> None:
    """FailedPrecondition when garbage collection reclaimed or repacked a pack the point references
    (ADR 0041, 0042).

    Only a backup that learned a chunk was present before its pack was condemned, and committed
    after the pack was reclaimed, gets here; the next backup uploads the chunk again.
    """
    reclaimed = await tx.hold_packs(account_id, sorted(set(pack_ids)))
    if reclaimed:
        raise FailedPrecondition(
            f"{len(reclaimed)} packs holding chunks of this point were reclaimed or repacked while the backup ran"
            f" (first: {reclaimed[0]}); run the backup again, it uploads those chunks anew"
        )


def _normalize(paths: Iterable[str]) -> list[str]:
    """Filter paths without leading and trailing '/' (checked by ``validation.read_manifest_request``)."""
    return [raw.strip("/") for raw in paths]


async def _restore_point(
    identity: Identity, restore_job_id: str, point_id: str, store: GatewayStore, *, field: str = "restore_job_id"
) -> Point:
    job = await require_job(identity, restore_job_id, "restore", store=store, field=field)
    if point_id and point_id != job.point_id:
        raise PermissionDenied(f"restore job {restore_job_id!r} restores another point than {point_id!r}")
    async with store.transaction() as tx:
        point = await tx.get_point(job.point_id or "")
    if point is None:
        raise NotFound(f"point {job.point_id!r} of restore job {restore_job_id!r} does not exist")
    if point.account_id != identity.account_id:
        raise PermissionDenied(f"point {point.point_id!r} belongs to another account")
    return point


async def read_manifest(
    identity: Identity,
    request: gateway_pb2.ReadManifestRequest,
    *,
    store: GatewayStore,
    object_store: ObjectStore,
    keys: AccountKeys,
) -> AsyncIterator[gateway_pb2.ReadManifestResponse]:
    """Stream the entries of the restore job's point below the include paths, minus the exclude paths."""
    validation.read_manifest_request(request)
    point = await _restore_point(identity, request.restore_job_id, request.point_id, store)
    include = _normalize(request.include_paths)
    exclude = _normalize(request.exclude_paths)
    try:
        data = await manifests.read_point_manifest(object_store, keys, point)
    except ObjectNotFound:
        raise NotFound(f"manifest of point {point.point_id!r} is missing from the object store") from None
    except ManifestFormatError as exc:
        raise FailedPrecondition(f"manifest of point {point.point_id!r} cannot be read: {exc}") from None
    try:
        entries = await asyncio.to_thread(manifests.filter_entries, data, include, exclude)
    except ManifestFormatError as exc:
        raise FailedPrecondition(f"manifest of point {point.point_id!r} cannot be read: {exc}") from None
    for start in range(0, len(entries), MANIFEST_BATCH):
        yield gateway_pb2.ReadManifestResponse(entries=entries[start : start + MANIFEST_BATCH])


@dataclasses.dataclass(frozen=True, slots=True)
class ReadRange:
    """One ranged GET of a pack object and the blobs inside it (in offset order)."""

    object_key: str
    offset: int
    length: int
    blobs: tuple[ChunkLocation, ...]
    # The pack's recorded object version (None: recorded before version ids, read the latest).
    version_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ReadWindow:
    """A run of request positions ``[start, end)`` and the ranges that hold their chunks."""

    start: int
    end: int
    ranges: tuple[ReadRange, ...]


def coalesce(
    locations: Iterable[ChunkLocation], *, max_gap: int = COALESCE_GAP, max_bytes: int = MAX_RANGE_BYTES
) -> list[ReadRange]:
    """Group blobs by pack object and merge blobs at most ``max_gap`` bytes apart into one range.

    A range never grows beyond ``max_bytes`` (a single larger blob gets its own
    range). Ranges come per object in offset order; each blob appears once.
    """
    by_object: dict[tuple[str, str | None], list[ChunkLocation]] = {}
    for location in locations:
        by_object.setdefault((location.object_key, location.version_id), []).append(location)
    ranges: list[ReadRange] = []
    for (key, version_id), blobs in by_object.items():
        blobs.sort(key=lambda b: (b.offset, b.length))
        current = [blobs[0]]
        start, end = blobs[0].offset, blobs[0].offset + blobs[0].length
        for blob in blobs[1:]:
            blob_end = blob.offset + blob.length
            if blob.offset - end <= max_gap and max(end, blob_end) - start <= max_bytes:
                current.append(blob)
                end = max(end, blob_end)
                continue
            ranges.append(ReadRange(key, start, end - start, tuple(current), version_id))
            current, start, end = [blob], blob.offset, blob_end
        ranges.append(ReadRange(key, start, end - start, tuple(current), version_id))
    return ranges


def plan_reads(
    ids: Sequence[bytes],
    locations: dict[bytes, ChunkLocation],
    *,
    window_bytes: int = READ_WINDOW_BYTES,
    max_gap: int = COALESCE_GAP,
    max_bytes: int = MAX_RANGE_BYTES,
) -> list[ReadWindow]:
    """Cut the request into windows of at most ``window_bytes`` of distinct content, and plan each window's GETs.

    A window holds at least one position. Ids without a location (unknown
    chunks a damage-tolerant request is answered about) take no room and no
    read. Within a window every distinct chunk is read once, coalesced with its neighbours in the same pack; ranges are
    ordered by the first position that needs them, so the head of the window
    arrives first. A chunk repeated in a later window is read again there (the
    memory bound wins over the extra read).
    """
    windows: list[ReadWindow] = []
    start = 0
    while start < len(ids):
        first_use: dict[bytes, int] = {}
        size = 0
        end = start
        while end < len(ids):
            cid = ids[end]
            if cid not in first_use and cid in locations:
                raw = locations[cid].raw_length
                if first_use and size + raw > window_bytes:
                    break
                first_use[cid] = end
                size += raw
            end += 1
        ranges = coalesce((locations[c] for c in first_use), max_gap=max_gap, max_bytes=max_bytes)
        ranges.sort(key=lambda r: min(first_use[b.chunk_id] for b in r.blobs))
        windows.append(ReadWindow(start, end, tuple(ranges)))
        start = end
    return windows


class OpenedChunk(NamedTuple):
    """A served chunk: ``data`` encoded as ``compression``, ``raw_length`` bytes once decoded.

    ``damage`` set: the chunk cannot be served (no data), and why (ADR 0030).
    """

    chunk_id: bytes
    data: bytes
    compression: gateway_pb2.ChunkCompression.ValueType
    raw_length: int
    damage: str = ""


def damaged(chunk_id: bytes, raw_length: int, reason: str) -> OpenedChunk:
    """The answer for a chunk whose stored bytes cannot be served."""
    return OpenedChunk(chunk_id, b"", gateway_pb2.CHUNK_COMPRESSION_NONE, raw_length, reason)


def open_range(
    chunk_id_key: bytes, data_key: DataKey | None, read: ReadRange, data: bytes, *, compressed: bool = False
) -> dict[bytes, OpenedChunk]:
    """Split a fetched range into its blobs and open each for sending; pure CPU, for a worker thread.

    A blob of an authenticated (encrypted) pack is only decrypted when the
    agent takes ``compressed`` data: AES-GCM proves it is the payload the
    gateway verified and sealed for this account and chunk id. Every other blob
    is decoded and its id re-checked (``verify_payload``). A blob that does
    not open or verify, or that the range does not hold in full, is answered
    ``damaged`` with the reason; the other blobs of the range are served.
    """
    view = memoryview(data)
    responses: dict[bytes, OpenedChunk] = {}
    for blob in read.blobs:
        begin = blob.offset - read.offset
        if begin + blob.length > len(data):
            responses[blob.chunk_id] = damaged(
                blob.chunk_id, blob.raw_length, f"its pack is shorter than recorded ({read.offset + len(data)} bytes)"
            )
            continue
        stored = bytes(view[begin : begin + blob.length])
        encrypted = blob.pack_format in ENCRYPTED_VERSIONS
        try:
            payload = open_blob(data_key, blob.pack_format, blob.chunk_id, blob.compression, blob.raw_length, stored)
        except PackFormatError as exc:
            reason = "authentication failed" if encrypted and data_key is not None else f"cannot be opened: {exc}"
            responses[blob.chunk_id] = damaged(blob.chunk_id, blob.raw_length, reason)
            continue
        if compressed and encrypted:
            compression = PROTO_COMPRESSION[blob.compression]
        else:
            try:
                payload = verify_payload(chunk_id_key, blob.chunk_id, payload, blob.compression, blob.raw_length)
            except ChunkRejected as exc:
                responses[blob.chunk_id] = damaged(blob.chunk_id, blob.raw_length, f"verification failed: {exc}")
                continue
            compression = gateway_pb2.CHUNK_COMPRESSION_NONE
        responses[blob.chunk_id] = OpenedChunk(blob.chunk_id, payload, compression, blob.raw_length)
    return responses


_verify_executor: concurrent.futures.ThreadPoolExecutor | None = None
_build_workers: WorkerThreads | None = None


def _build_threads() -> WorkerThreads:
    """The threads that build committed manifests (created on first use, shared by all commits).

    A build waits on the event loop for chunk locations (a query: a pool connection), so it must
    not take the loop's default executor, which the transactions holding those connections may be
    waiting on (ADR 0050 update); at most ``BUILD_THREADS`` commits build at once.
    """
    global _build_workers
    if _build_workers is None:
        _build_workers = WorkerThreads(BUILD_THREADS, "manifest-build")
    return _build_workers


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
) -> AsyncIterator[gateway_pb2.ReadChunksResponse]:
    """Stream the requested chunks of the agent's account, verified, in request order (every occurrence).

    One chunk per message in the response's own fields, or, when the request
    sets ``max_message_bytes``, runs of consecutive positions in ``chunks`` (at
    most ``MAX_READ_MESSAGE_BYTES``; see ``_serve_windows``). Reads are planned
    per window of the request (``plan_reads``): each distinct chunk of a window
    is read once, nearby blobs of a pack in one ranged GET;
    at most ``RANGES_IN_FLIGHT`` ranges are fetched and verified at a time, and
    at most two windows of content are held (the one being sent and the next).

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
    await _restore_point(identity, request.restore_job_id, "", store, field="restore_job_id")
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
            yield gateway_pb2.ReadChunksResponse(
                chunk_id=c.chunk_id,
                data=c.data,
                compression=c.compression,
                raw_length=c.raw_length,
            )
            continue
        response = gateway_pb2.ReadChunksResponse()
        add = response.chunks.add
        for c in run:
            if c.damage:
                log.warning("stored chunk %s cannot be served: %s", c.chunk_id.hex(), c.damage)
                add(chunk_id=c.chunk_id, damage=c.damage)
            else:
                add(chunk_id=c.chunk_id, data=c.data, compression=c.compression, raw_length=c.raw_length)
        yield response


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
