"""The catalog's logic: recording and indexing points, instance settings, and the read side of the API.

Plain functions over the ports, unit-tested with the in-memory fakes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform import paging
from strongroom_platform.auth import CallAuth, authorize, visible_accounts
from strongroom_platform.eventbus import PoisonRecord
from strongroom_platform.events import from_timestamp
from strongroom_platform.manifest import ManifestFormatError
from strongroom_platform.objectstore import ObjectNotFound, ObjectStore

from strongroom_catalog.errors import FailedPrecondition, InvalidArgument, NotFound
from strongroom_catalog.manifests import ManifestReader, manifest_pieces
from strongroom_catalog.model import EntryRow, PointRecord, TreePlace, VersionRecord
from strongroom_catalog.paths import decode_page_token, encode_page_token, normalize_directory
from strongroom_catalog.ports import CatalogStore
from strongroom_catalog.tree import BaseUnreadable, Delta, diff_points, index_baseline

log = logging.getLogger(__name__)

POINT_CREATED_CONSUMER = "catalog.point-created"
INSTANCE_SETTINGS_CONSUMER = "catalog.instance-settings-changed"
INDEX_BATCH_SIZE = 10_000
DEFAULT_PAGE_SIZE = 200
MAX_PAGE_SIZE = 1000
DEFAULT_VERSION_PAGE = 100
MAX_VERSION_PAGE = 1000


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


async def index_point(
    repo: CatalogStore,
    store: ObjectStore | ManifestReader,
    point: PointRecord,
    *,
    batch_size: int = INDEX_BATCH_SIZE,
) -> None:
    """Index the point for browse and search, and mark it browsable (ADR 0049).

    The point becomes the next point of its lineage. With a live base indexed the same way, only
    the differences between the two manifests are written; otherwise the point is a baseline.
    Everything is written in one transaction, streaming (bounded memory; CPU work in a worker
    thread). A manifest that is missing or unreadable is recorded as the point's ``index_error``
    (the point stays listed but not browsable); an unreadable base only costs the delta (the point
    is indexed as a baseline); other failures propagate so the event is retried. ``store`` is the
    gateway (manifests are encrypted, ADR 0016) or, for plaintext manifests only, the object store.
    """
    try:
        try:
            outcome = await _index_once(repo, store, point, batch_size=batch_size, use_base=True)
        except BaseUnreadable as exc:
            log.warning(
                "point %s: the base point's manifest is unreadable (%s); indexed as a baseline", point.point_id, exc
            )
            outcome = await _index_once(repo, store, point, batch_size=batch_size, use_base=False)
    except (ObjectNotFound, ManifestFormatError) as exc:
        reason = f"manifest {point.manifest_key!r} not found" if isinstance(exc, ObjectNotFound) else str(exc)
        log.error("point %s cannot be indexed: %s", point.point_id, reason)
        async with repo.transaction() as tx:
            await tx.set_index_state(point.point_id, browsable=False, error=reason)
        return
    if outcome is not None:
        log.info("indexed point %s: %s", point.point_id, outcome)


async def _index_once(
    repo: CatalogStore, store: ObjectStore | ManifestReader, point: PointRecord, *, batch_size: int, use_base: bool
) -> str | None:
    async with repo.transaction() as tx:
        locked = await tx.get_point(point.point_id)
        if locked is None or locked.browsable or locked.expired:
            return None  # another consumer finished first, or retention came by
        # the lineage stays locked until commit: its points are indexed one at a time
        lineage_id, head = await tx.search_lineage(locked.instance_id, locked.account_id, locked.mount_point)
        seq = head + 1
        if not await tx.add_search_point(lineage_id, seq, locked.point_id):
            # every write of an indexing is one transaction, so a placed point is browsable
            raise InvalidArgument(f"point {locked.point_id} has a place in the search index but no browse index")
        pieces = manifest_pieces(store, locked.point_id, locked.manifest_key)
        base = await tx.lineage_point(lineage_id, head) if head and use_base else None
        if base is not None and base.tree is not None and not base.expired:
            place = TreePlace(lineage_id, seq, base.tree.floor)
            written = [0, 0]

            async def flush(delta: Delta) -> None:
                await tx.add_tree_changes(delta.tree)
                await tx.add_search_changes(delta.search)
                written[0] += len(delta.tree)
                written[1] += len(delta.search)
                delta.tree.clear()
                delta.search.clear()

            base_pieces = manifest_pieces(store, base.point_id, base.manifest_key)
            records = await diff_points(base_pieces, pieces, Delta(lineage_id, seq), flush)
            outcome = f"{records} entries, delta from {base.point_id}: {written[0]} browse, {written[1]} search rows"
        else:
            place = TreePlace(lineage_id, seq, seq)
            entries, rows, changes = await index_baseline(
                tx, pieces, place, tx.search_state(lineage_id, head), batch_size=batch_size
            )
            outcome = f"{entries} entries, baseline: {rows} browse rows, {changes} search rows"
        await tx.add_tree_point(locked.point_id, place)
        await tx.set_index_state(locked.point_id, browsable=True, error=None)
    return outcome


# --- operator reads: each takes the call's ``CallAuth`` (ADR 0024) -------------------------


@dataclass(frozen=True, slots=True)
class VersionPage:
    versions: list[VersionRecord]
    next_page_token: str  # empty on the last page


async def list_versions(
    repo: CatalogStore, instance_id: str, *, page_size: int = 0, page_token: str = "", call: CallAuth
) -> VersionPage:
    """One page of the live versions of the instance, newest first, with their points.

    Only versions of the caller's accounts are listed: an instance of another account lists
    nothing, like an unknown one.
    """
    if not instance_id:
        raise InvalidArgument("instance_id is required")
    size = paging.page_size(page_size, DEFAULT_VERSION_PAGE, MAX_VERSION_PAGE)
    after = paging.token_position(page_token)
    found = await repo.list_versions(instance_id, accounts=visible_accounts(call=call), after=after, limit=size + 1)
    return VersionPage(*paging.keyset_page(found, size, lambda v: (v.created_at, v.version_id)))


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
    place = point.tree
    if directory:
        kind = await (repo.entry_type(point_id, directory) if place is None else repo.tree_entry_type(place, directory))
        if kind is None:
            raise NotFound(f"no directory {directory!r} in point {point_id!r}")
        if kind != common_pb2.ENTRY_TYPE_DIRECTORY:
            raise NotFound(f"{directory!r} in point {point_id!r} is not a directory")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if place is None:  # indexed before ADR 0049
        rows = await repo.list_children(point_id, directory, after=after, limit=size + 1)
    else:
        rows = await repo.tree_children(point_id, place, directory, after=after, limit=size + 1)
    if len(rows) > size:
        rows = rows[:size]
        return rows, encode_page_token(point_id, directory, rows[-1].name)
    return rows, ""
