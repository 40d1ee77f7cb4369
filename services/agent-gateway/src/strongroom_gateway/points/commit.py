"""CommitPoint: validate a backup point's entries, build and write its manifest, and record the point.

Contract: the header first, then entry batches (spooled to disk, any order); the point's filesystem
must be approved for the instance. A repeated commit of the same job and filesystem returns the
existing point. The manifest is built on ``building``'s threads, its packs locked at least as long
as the point (``packs``), the sealed manifest written under Object Lock, and the point recorded
(``record``); chunks moved by collection meanwhile are located again, at most
``RELOCATE_ATTEMPTS`` times (ADR 0057).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator

from strongroom.agent.v1 import gateway_pb2
from strongroom_platform.clock import Clock
from strongroom_platform.manifest import SEGMENTED_VERSION, ManifestFormatError, decode_segment_list, manifest_version
from strongroom_platform.objectstore import ObjectNotFound, ObjectStore

from strongroom_gateway import filesystems, manifests, segments, validation
from strongroom_gateway.agents import Identity
from strongroom_gateway.errors import FailedPrecondition, InvalidArgument
from strongroom_gateway.ingest import LOCK_MARGIN, RETENTION, PackWriter
from strongroom_gateway.keys import AccountKeys
from strongroom_gateway.points import building
from strongroom_gateway.points import packs as pack_locks
from strongroom_gateway.points.inherit import Inheritance, inheritance, relocate
from strongroom_gateway.points.packs import RELOCATE_ATTEMPTS, Moved
from strongroom_gateway.points.record import record_point
from strongroom_gateway.ports import GatewayStore, Point
from strongroom_gateway.restrictions import require_job
from strongroom_gateway.synthesis import BuiltManifest, Locate, SortedSpool, add_refs
from strongroom_gateway.vault import Vault

log = logging.getLogger(__name__)


def manifest_key(account_id: str, point_id: str) -> str:
    return f"manifests/{account_id}/{point_id}"


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
    segment_writer: PackWriter | None = None,
) -> gateway_pb2.CommitPointResponse:
    """Validate the entries, write the manifest (locked), record the point and emit point-created.

    The point's disaster-recovery record (``vault``) is written before the point is recorded, and
    the account's key record and the instance's record are locked at least as long as the point.

    With ``base_point_id`` the manifest is synthesized: the base point's entries
    minus the deleted paths, plus the new and changed entries (``synthesis``),
    in bounded memory. The base must be a point of the same instance, account
    and mount point (else FAILED_PRECONDITION, and the agent sends everything).

    With ``segment_writer`` the manifest is stored as format version 2 (ADR 0065): its record stream
    cut into segments, those the account does not hold yet written into packs through it; the point
    references the packs of its segments like those of its chunks (locks, GC, repack). Without it,
    version 1.

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

        opened = await _open_base(base, object_store, keys) if base else None
        # Before any chunk is located: the moves this commit may miss are those of a later epoch
        # (ADR 0057); the point then references their new packs too.
        async with store.transaction() as tx:
            account = await tx.get_account(identity.account_id)
            epoch = await tx.gc_epoch(identity.account_id)
            # The base's packs, if no move touched them since it was recorded (ADR 0034 update).
            inherited = await inheritance(tx, identity.account_id, base, epoch) if base is not None else None
        assert account is not None  # the agent's identity names it
        locate = building.locator(store, identity.account_id, asyncio.get_running_loop())
        built, stored = await _manifest(
            _Inputs(
                identity.account_id, header.entry_count, base, opened, changes, deleted, inherited, account.chunk_id_key
            ),
            store=store,
            object_store=object_store,
            keys=keys,
            writer=segment_writer,
            locate=locate,
            timing=timing,
        )
    finally:
        sent, removed = changes.count, deleted.count
        changes.close()
        deleted.close()
    now = clock.now()
    retain_until = now + RETENTION + LOCK_MARGIN
    await vault.keep_for_point(identity.account_id, identity.instance_id, retain_until)
    await pack_locks.extend_pack_locks(identity.account_id, built.packs, now, store, object_store, write_slots)
    timing.lap("pack locks")
    point_id = str(uuid.uuid4())
    key = manifest_key(identity.account_id, point_id)
    data = await manifests.seal(keys, account_id=identity.account_id, point_id=point_id, manifest=stored.manifest)
    async with write_slots:
        manifest_version_id = await object_store.put(key, data, retain_until=retain_until)
    timing.lap("manifest write")

    draft = Point(
        point_id=point_id,
        account_id=identity.account_id,
        instance_id=identity.instance_id,
        job_id=job.job_id,
        version_id="",  # the job's, set when recorded
        mount_point=filesystem.mount_point,
        filesystem=filesystem.SerializeToString(),
        manifest_key=key,
        file_count=built.file_count,
        total_bytes=built.total_bytes,
        created_at=now,
        retain_until=retain_until,
        manifest_version_id=manifest_version_id,
    )
    refs = built.refs
    for _ in range(RELOCATE_ATTEMPTS):
        try:
            async with store.transaction() as tx:
                point = await record_point(tx, draft, filesystem, refs, epoch, vault=vault)
            break
        except Moved:
            # Garbage collection moved chunks out of this point's packs since they were located (it
            # does not wait for running backups, ADR 0057): locate them again, lock their packs as
            # long as the point (ADR 0010), and record where they are now.
            async with store.transaction() as tx:
                epoch = await tx.gc_epoch(identity.account_id)
            if not built.data and base is not None:
                # An unchanged base's list was taken unread: its entries are needed to locate their chunks now.
                built.data, _ = await _expand_base(base, stored.manifest, object_store, keys, store)
            refs = await asyncio.to_thread(relocate, built, locate)
            if stored.segment_ids:
                add_refs(refs, await segments.segment_pack_refs(store, identity.account_id, stored.segment_ids))
            await pack_locks.extend_pack_locks(identity.account_id, refs, now, store, object_store, write_slots)
            log.info("job %s: chunks moved during the commit; located again in %d packs", job.job_id, len(refs))
    else:
        raise FailedPrecondition("packs of this point kept moving while it was committed; run the backup again")
    if point.point_id != point_id:  # recorded first by a retry of this commit
        return _response(point)
    timing.lap("record")
    log.info(
        "job %s: committed point %s of %s: %d entries (%d sent, %d deleted, base %s%s) in %.2f s (%s)",
        job.job_id,
        point_id,
        filesystem.mount_point,
        built.entry_count,
        sent,
        removed,
        base.point_id if base is not None else "none",
        ", its packs inherited" if inherited is not None else "",
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


@dataclasses.dataclass(frozen=True, slots=True)
class _Inputs:
    """What a commit's manifest is made of: the agent's count, the base (opened, not expanded), the spooled
    changes and deletions, the base's references if inherited, and the account's chunk-id key."""

    account_id: str
    entry_count: int
    base: Point | None
    opened: bytes | None
    changes: SortedSpool
    deleted: SortedSpool
    inherited: Inheritance | None
    chunk_id_key: bytes


async def _manifest(
    inputs: _Inputs,
    *,
    store: GatewayStore,
    object_store: ObjectStore,
    keys: AccountKeys,
    writer: PackWriter | None,
    locate: Locate,
    timing: _Stopwatch,
) -> tuple[BuiltManifest, segments.WrittenSegments]:
    """The point's manifest built (``built.refs`` its references) and the manifest to store.

    An unchanged point (nothing sent or deleted) of a base stored as segments whose references are
    inherited takes the base's segment list, counts and references as they are: nothing is read, cut
    or looked up (ADR 0065; ``built.data`` is then empty). Otherwise the base is expanded, the point
    synthesized (ADR 0034) and, with ``writer``, stored as segments.
    """
    base, opened, inherited = inputs.base, inputs.opened, inputs.inherited
    if (
        writer is not None
        and inherited is not None
        and opened is not None
        and not inputs.changes.count
        and not inputs.deleted.count
        and manifest_version(opened) == SEGMENTED_VERSION
    ):
        built, stored = await asyncio.to_thread(_unchanged, opened, inherited)
        _check_count(base, built, inputs.entry_count)
        timing.lap("unchanged base")
        return built, stored
    base_manifest, base_segments = (
        await _expand_base(base, opened, object_store, keys, store)
        if base is not None and opened is not None
        else (None, [])
    )
    timing.lap("read base")
    try:
        built = await building.build_threads().run(
            building.build, base_manifest, inputs.changes, inputs.deleted, locate, inherited
        )
    except ManifestFormatError as exc:
        raise FailedPrecondition(f"the base point's manifest cannot be read: {exc}") from None
    _check_count(base, built, inputs.entry_count)
    timing.lap("synthesis")
    stored = await _store_segments(inputs.account_id, inputs.chunk_id_key, built, base_segments, store, writer, locate)
    timing.lap(f"segments ({stored.written} written)")
    return built, stored


def _check_count(base: Point | None, built: BuiltManifest, entry_count: int) -> None:
    if base is not None and built.entry_count != entry_count:
        raise FailedPrecondition(
            f"the point synthesized from base {base.point_id!r} has {built.entry_count} entries, the agent"
            f" counted {entry_count}; send a full manifest"
        )


async def _store_segments(
    account_id: str,
    chunk_id_key: bytes,
    built: BuiltManifest,
    base_segments: list[bytes],
    store: GatewayStore,
    writer: PackWriter | None,
    locate: Locate,
) -> segments.WrittenSegments:
    """The manifest to store, and ``built.refs`` made the point's references: its entries' chunks and,
    with ``writer``, its segments (written through it), one reference each per pack (ADR 0065)."""
    if built.from_base and base_segments:
        # The base's recorded references count its segments too: take them off before adding ours.
        try:
            base_refs: dict[str, int] | None = await segments.segment_pack_refs(store, account_id, base_segments)
        except ManifestFormatError:
            base_refs = None
        if base_refs is None or any(built.refs.get(p, 0) < n for p, n in base_refs.items()):
            built.refs = await asyncio.to_thread(relocate, built, locate)  # never trusted: count again
        else:
            add_refs(built.refs, base_refs, -1)
    if writer is None:
        return segments.WrittenSegments(built.data, [], {}, 0)
    written = await segments.write_segments(store, writer, account_id, chunk_id_key, built.data)
    add_refs(built.refs, written.refs)
    return written


async def _open_base(base: Point, object_store: ObjectStore, keys: AccountKeys) -> bytes:
    """The base point's manifest object, opened (a version 2 one not expanded)."""
    try:
        return await manifests.read_stored_manifest(object_store, keys, base)
    except (ObjectNotFound, ManifestFormatError) as exc:
        raise _unreadable_base(base, exc) from None


async def _expand_base(
    base: Point, opened: bytes, object_store: ObjectStore, keys: AccountKeys, store: GatewayStore
) -> tuple[bytes, list[bytes]]:
    """The base's version 1 bytes (expanded if stored as segments) and its segment ids; decoded
    piece by piece in the synthesis thread."""
    try:
        return await manifests.expand(object_store, keys, base, opened, store=store)
    except (ObjectNotFound, ManifestFormatError) as exc:
        raise _unreadable_base(base, exc) from None


def _unreadable_base(base: Point, exc: Exception) -> FailedPrecondition:
    return FailedPrecondition(
        f"the manifest of base point {base.point_id!r} cannot be read ({exc}); send a full manifest"
    )


def _unchanged(listing: bytes, inherited: Inheritance) -> tuple[BuiltManifest, segments.WrittenSegments]:
    """The point of an unchanged base stored as segments: its list, counts and references as they are."""
    refs = decode_segment_list(listing)
    built = BuiltManifest(
        b"",
        entry_count=sum(r.entry_count for r in refs),
        file_count=inherited.file_count,
        total_bytes=inherited.total_bytes,
        refs=dict(inherited.refs),
        from_base=True,
    )
    ids = list(dict.fromkeys(r.segment_id for r in refs))
    return built, segments.WrittenSegments(listing, ids, {}, 0)


def _response(point: Point) -> gateway_pb2.CommitPointResponse:
    return gateway_pb2.CommitPointResponse(
        point_id=point.point_id, file_count=point.file_count, total_bytes=point.total_bytes
    )
