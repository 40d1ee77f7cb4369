"""The catalog's logic: recording and indexing points, instance settings, and the read side of the API.

Plain functions over the ports, unit-tested with the in-memory fakes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform.auth import CallAuth, authorize, visible_accounts
from strongroom_platform.eventbus import PoisonRecord
from strongroom_platform.events import from_timestamp
from strongroom_platform.manifest import ManifestFormatError, decode_manifest
from strongroom_platform.objectstore import ObjectNotFound, ObjectStore

from strongroom_catalog.errors import FailedPrecondition, InvalidArgument, NotFound
from strongroom_catalog.manifests import ManifestReader
from strongroom_catalog.model import EntryRow, PointRecord, VersionRecord
from strongroom_catalog.paths import decode_page_token, encode_page_token, normalize_directory
from strongroom_catalog.ports import CatalogStore
from strongroom_catalog.search import start_delta

log = logging.getLogger(__name__)

POINT_CREATED_CONSUMER = "catalog.point-created"
INSTANCE_SETTINGS_CONSUMER = "catalog.instance-settings-changed"
INDEX_BATCH_SIZE = 10_000
DEFAULT_PAGE_SIZE = 200
MAX_PAGE_SIZE = 1000
_INT64_MAX = (1 << 63) - 1
_INT32_MAX = (1 << 31) - 1


def point_from_event(event: events_pb2.PointCreated) -> PointRecord:
    """The point an event describes; PoisonRecord if a required field is missing."""
    missing = [name for name in ("point_id", "version_id", "instance_id", "manifest_key") if not getattr(event, name)]
    if not event.HasField("version_created_at"):
        missing.append("version_created_at")
    if missing:
        raise PoisonRecord(f"point-created event {event.meta.event_id} lacks {', '.join(missing)}")
    fs = event.filesystem
    return PointRecord(
        point_id=event.point_id,
        version_id=event.version_id,
        instance_id=event.instance_id,
        account_id=event.account_id,
        mount_point=fs.mount_point,
        device=fs.device,
        fs_type=fs.fs_type,
        capacity_bytes=fs.capacity_bytes,
        manifest_key=event.manifest_key,
        file_count=event.file_count,
        total_bytes=event.total_bytes,
        created_at=from_timestamp(event.version_created_at),
        retain_until=from_timestamp(event.retain_until) if event.HasField("retain_until") else None,
    )


async def handle_point_created(
    event: events_pb2.PointCreated,
    *,
    repo: CatalogStore,
    store: ObjectStore | ManifestReader,
    batch_size: int = INDEX_BATCH_SIZE,
) -> None:
    """Record the point (and its version), then index its files for browsing.

    Idempotent: the point is recorded once per event id; indexing runs while
    the point is not browsable yet, so a redelivery after a crash between the
    two steps (or during indexing) completes the index without duplicates.
    """
    point = point_from_event(event)
    async with repo.transaction() as tx:
        if await tx.claim_event(POINT_CREATED_CONSUMER, event.meta.event_id):
            await tx.upsert_point(point)
        current = await tx.get_point(point.point_id)
    if current is None or current.browsable or current.index_error is not None or current.expired:
        return
    await index_point(repo, store, current, batch_size=batch_size)


async def handle_instance_settings_changed(event: events_pb2.InstanceSettingsChanged, *, repo: CatalogStore) -> bool:
    """Apply the instance's "keep at least one backup version" setting to retention.

    Idempotent per event id. A setting made before the one applied last
    (``meta.occurred_at``) is ignored, so a redelivered or reordered older
    event cannot bring back an older value. Returns whether the flag was set.
    """
    if not event.instance_id or not event.meta.HasField("occurred_at"):
        raise PoisonRecord(f"instance-settings-changed event {event.meta.event_id} lacks instance_id or occurred_at")
    made_at = from_timestamp(event.meta.occurred_at)
    async with repo.transaction() as tx:
        if not await tx.claim_event(INSTANCE_SETTINGS_CONSUMER, event.meta.event_id):
            return False
        applied = await tx.set_keep_latest(event.instance_id, event.keep_latest_version, as_of=made_at)
    if applied:
        log.info("instance %s: keep latest version %s", event.instance_id, "on" if event.keep_latest_version else "off")
    else:
        log.info("instance %s: ignored settings made at %s, a newer setting applies", event.instance_id, made_at)
    return applied


class _Batcher:
    """Turns manifest entries into index rows, checking the manifest's ordering contract on the way."""

    def __init__(self, point_id: str, entries: Iterator[common_pb2.FileEntry]) -> None:
        self._point_id = point_id
        self._entries = entries
        self._previous: bytes | None = None
        self.count = 0

    def next_batch(self, size: int) -> list[EntryRow]:
        """Up to ``size`` rows (empty at the end). CPU-bound: called in a worker thread."""
        rows: list[EntryRow] = []
        for entry in self._entries:
            path = entry.path
            encoded = path.encode()
            if self._previous is not None and encoded <= self._previous:
                raise ManifestFormatError(f"entries not sorted or duplicated at {path!r}")
            self._previous = encoded
            if path == "":  # the point's root directory itself: nothing to list it in
                continue
            parent, _, name = path.rpartition("/")
            if any(segment in ("", ".", "..") for segment in path.split("/")):
                raise ManifestFormatError(f"invalid entry path {path!r}")
            if entry.size > _INT64_MAX or entry.mode > _INT32_MAX:
                # The index stores signed 64/32-bit integers; such an entry can only be corrupt.
                raise ManifestFormatError(f"entry {path!r} has an out-of-range size or mode")
            rows.append(
                EntryRow(
                    point_id=self._point_id,
                    parent=parent,
                    name=name,
                    type=entry.type,
                    mode=entry.mode,
                    uid=entry.uid,
                    gid=entry.gid,
                    size=entry.size,
                    mtime_ns=entry.mtime_ns,
                    link_target=entry.link_target,
                )
            )
            if len(rows) >= size:
                break
        self.count += len(rows)
        return rows


async def index_point(
    repo: CatalogStore,
    store: ObjectStore | ManifestReader,
    point: PointRecord,
    *,
    batch_size: int = INDEX_BATCH_SIZE,
) -> None:
    """Load the point's manifest into the file index and the search index, and mark the point browsable.

    The whole index is replaced in one transaction, in batches (bounded memory
    per batch; decoding runs in a worker thread). A manifest that is missing
    or unreadable is recorded as the point's ``index_error`` (the point stays
    listed but not browsable); other failures propagate so the event is retried.
    ``store`` is the gateway (manifests are encrypted, ADR 0016) or, for
    plaintext manifests only, the object store.
    """
    try:
        if isinstance(store, ManifestReader):
            data = await store.read_point_manifest(point.point_id)
        else:
            data = await store.get(point.manifest_key)
            if data[:4] == b"SRME":
                raise ManifestFormatError("the manifest is encrypted: set STRONGROOM_GATEWAY_ADDR to read it")
        batcher = _Batcher(point.point_id, decode_manifest(data))
        async with repo.transaction() as tx:
            locked = await tx.get_point(point.point_id)
            if locked is None or locked.browsable or locked.expired:
                return  # another consumer finished first, or retention came by
            await tx.delete_entries(point.point_id)
            # the search index takes the point as the delta from its lineage's newest point (ADR 0043)
            delta = await start_delta(tx, locked)
            while batch := await asyncio.to_thread(batcher.next_batch, batch_size):
                await tx.add_entries(batch)
                if delta is not None:
                    await delta.feed(batch)
            changes = 0 if delta is None else await delta.finish()
            await tx.set_index_state(point.point_id, browsable=True, error=None)
        del data
        log.info("indexed point %s: %d entries, %d search changes", point.point_id, batcher.count, changes)
    except (ObjectNotFound, ManifestFormatError) as exc:
        reason = f"manifest {point.manifest_key!r} not found" if isinstance(exc, ObjectNotFound) else str(exc)
        log.error("point %s cannot be indexed: %s", point.point_id, reason)
        async with repo.transaction() as tx:
            await tx.set_index_state(point.point_id, browsable=False, error=reason)


# --- operator reads: each takes the call's ``CallAuth`` (ADR 0024) -------------------------


async def list_versions(repo: CatalogStore, instance_id: str, *, call: CallAuth) -> list[VersionRecord]:
    """Live versions of the instance, newest first, with their points.

    Only versions of the caller's accounts are listed: an instance of another account lists
    nothing, like an unknown one.
    """
    if not instance_id:
        raise InvalidArgument("instance_id is required")
    return await repo.list_versions(instance_id, accounts=visible_accounts(call=call))


async def get_point(repo: CatalogStore, point_id: str, *, call: CallAuth) -> PointRecord:
    """The live point; NotFound when unknown, of another account, or expired.

    The restore service (a service principal) reads the points of every account.
    """
    if not point_id:
        raise InvalidArgument("point_id is required")

    def not_found() -> NotFound:
        return NotFound(f"point {point_id!r} not found")

    point = await repo.get_point(point_id)
    if point is None:
        raise not_found()
    authorize(point.account_id, not_found, call=call)
    if point.expired:
        raise NotFound(f"point {point_id!r} has expired (its version passed the retention period)")
    if point.canceled:
        raise NotFound(f"point {point_id!r} was deleted: backup of its instance was canceled")
    return point


async def browse_point(
    repo: CatalogStore, point_id: str, path: str, *, call: CallAuth, page_size: int = 0, page_token: str = ""
) -> tuple[list[EntryRow], str]:
    """One page of the direct children of directory ``path``, by name; and the next page token ("" at the end)."""
    directory = normalize_directory(path)
    after = decode_page_token(page_token, point_id, directory)
    point = await get_point(repo, point_id, call=call)
    if not point.browsable:
        if point.index_error:
            raise FailedPrecondition(f"point {point_id!r} cannot be browsed: {point.index_error}")
        raise FailedPrecondition(f"point {point_id!r} is still being indexed; try again shortly")
    if directory:
        kind = await repo.entry_type(point_id, directory)
        if kind is None:
            raise NotFound(f"no directory {directory!r} in point {point_id!r}")
        if kind != common_pb2.ENTRY_TYPE_DIRECTORY:
            raise NotFound(f"{directory!r} in point {point_id!r} is not a directory")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    rows = await repo.list_children(point_id, directory, after=after, limit=size + 1)
    if len(rows) > size:
        rows = rows[:size]
        return rows, encode_page_token(point_id, directory, rows[-1].name)
    return rows, ""
