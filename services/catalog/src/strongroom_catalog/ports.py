"""Ports of the catalog: its storage, as the handlers need it.

Adapters: ``repository.PgCatalogStore`` (asyncpg) and
``testing.InMemoryCatalogStore``; both pass the contract suite in
``services/catalog/tests/contract_repository.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from strongroom_platform.db import InboxOutboxTx

from strongroom_catalog.model import (
    EntryRow,
    ExpiredVersion,
    Hold,
    InstanceState,
    Lineage,
    LineagePoint,
    NameQuery,
    PathKey,
    PointRecord,
    PruneWindow,
    SearchChange,
    SearchState,
    TreeChange,
    TreePlace,
    VersionRecord,
)


class CatalogTx(InboxOutboxTx, Protocol):
    """Writes that commit together or not at all (leaving the block by an exception rolls back)."""

    async def upsert_point(self, point: PointRecord) -> None:
        """Insert the point, its version and its instance when missing.

        Rows are immutable (ADR 0031): an existing version keeps its state (an
        expired version stays expired) and an existing point stays as first recorded.
        """
        ...

    async def get_point(self, point_id: str) -> PointRecord | None:
        """The point, locked against concurrent index writes until the transaction ends."""
        ...

    async def delete_entries(self, point_id: str) -> None:
        """Remove every indexed entry of the point."""
        ...

    async def add_entries(self, rows: Sequence[EntryRow]) -> None:
        """Append entries (no duplicates of (point_id, parent, name) allowed)."""
        ...

    async def set_index_state(self, point_id: str, *, browsable: bool, error: str | None) -> None:
        """Record the outcome of indexing the point (the newest outcome counts)."""
        ...

    async def set_keep_latest(self, instance_id: str, keep_latest: bool, *, as_of: dt.datetime | None = None) -> bool:
        """Record the instance's "keep at least one backup version" flag (inserting the instance).

        With ``as_of`` (when the setting was made) the flag changes only if no
        setting made later has been applied already; it returns whether it
        changed. Without, it always changes and the time of the last applied
        setting stays as it was.
        """
        ...

    async def expire_due_versions(self, limit: int) -> list[ExpiredVersion]:
        """Expire at most ``limit`` (1-1000) versions that the retention rule says are due, oldest first.

        Due: created 30 days or more before the trusted time (the database's clock plus the owner's
        offset, never the caller's), unless it is its instance's newest version and the instance's
        latest keep-at-least-one setting is on (the default). Their points' entries are dropped.
        A version expires once, whatever runs concurrently.
        """
        ...

    async def instance_state(self, instance_id: str) -> InstanceState | None:
        """The instance's state, locked (the lock expire_due_versions takes) until the transaction
        ends; None when the catalog has no version and no cancel of it."""
        ...

    async def append_cancellation(
        self, instance_id: str, account_id: str, *, canceled: bool, at: dt.datetime, event_id: str | None, subject: str
    ) -> None:
        """Append a cancel (``canceled``) or a reinstatement row (inserting the instance when missing)."""
        ...

    async def add_hold(self, hold: Hold) -> None: ...

    async def get_hold(self, hold_id: str) -> Hold | None: ...

    async def release_hold(self, hold_id: str, *, by: str, at: dt.datetime) -> None:
        """Append the hold's release (once: a second release of it changes nothing)."""
        ...

    async def list_holds(
        self,
        instance_id: str,
        *,
        include_released: bool,
        after: tuple[dt.datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[Hold]:
        """The instance's holds, oldest first by (placed_at, hold_id bytewise); ``after``: strictly
        after that position; at most ``limit`` (None: all)."""
        ...

    # --- the search index (ADR 0043) ---

    async def search_lineage(self, instance_id: str, account_id: str, mount_point: str) -> tuple[int, int]:
        """The lineage of the instance's filesystem (inserted when missing) and its newest point's
        seq (0: none yet). The lineage is locked against concurrent indexing until the transaction ends."""
        ...

    def search_state(self, lineage_id: int, seq: int) -> AsyncIterator[SearchState]:
        """The paths present in point ``seq`` of the lineage, in UTF-8 byte order of the path."""
        ...

    async def add_search_point(self, lineage_id: int, seq: int, point_id: str) -> bool:
        """Record the point as point ``seq`` of the lineage; False (nothing recorded) when the
        point has its place already."""
        ...

    async def add_search_changes(self, rows: Sequence[SearchChange]) -> None:
        """Append changes (no two rows of one (lineage_id, path, seq))."""
        ...

    # --- browse by lineage (ADR 0049) ---

    async def lineage_point(self, lineage_id: int, seq: int) -> PointRecord | None:
        """Point ``seq`` of the lineage (with its expiry and tree place), None when there is none."""
        ...

    async def add_tree_point(self, point_id: str, place: TreePlace) -> None:
        """Record that the point is browsed from its lineage's tree changes."""
        ...

    async def add_tree_changes(self, rows: Sequence[TreeChange]) -> None:
        """Append browse changes (no two rows of one (lineage_id, parent, name, seq))."""
        ...

    async def prune_window(self, lineage_id: int) -> PruneWindow | None:
        """What the next prune of the lineage covers: ``upto`` is its oldest point not expired (its
        head + 1 when every point expired), ``after`` the previous prune's ``upto`` (1: none);
        None when nothing expired since. Locks the lineage against indexing until the transaction ends."""
        ...

    async def prune_changes(self, window: PruneWindow, limit: int) -> int:
        """Delete at most ``limit`` rows of the lineage that no point from ``window.upto`` on reads:
        browse rows before ``window.floor``, every search row before ``upto`` when no point is live,
        rows replaced by a row of a point in (``after``, ``upto``], and tombstones of those points.
        Returns how many were deleted."""
        ...

    async def mark_pruned(self, window: PruneWindow) -> None:
        """Record that the lineage is pruned up to ``window.upto``."""
        ...


class CatalogStore(Protocol):
    """The catalog's storage: versions, points, their file index, and retention queries."""

    def transaction(self) -> AbstractAsyncContextManager[CatalogTx]:
        """Open a transaction; it commits when the block exits normally."""
        ...

    async def list_versions(
        self,
        instance_id: str,
        *,
        accounts: Collection[str] | None,
        after: tuple[dt.datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[VersionRecord]:
        """Live (not expired) versions of the instance with their points, newest first (then by
        version id, bytewise, descending).

        Only versions of ``accounts`` (None: of every account). Points are ordered by mount point.
        ``after`` (created_at, version_id) starts the list after that version; ``limit`` caps it.
        """
        ...

    async def get_point(self, point_id: str) -> PointRecord | None:
        """The point (also when its version expired: see ``PointRecord.expired``)."""
        ...

    async def entry_type(self, point_id: str, path: str) -> int | None:
        """The ``EntryType`` of the entry at the non-empty ``path``, or None if absent."""
        ...

    async def instance_account(self, instance_id: str) -> str | None:
        """The account of the instance's versions, None when the catalog has none."""
        ...

    async def search_lineages(self, *, instance_id: str | None, lineage_ids: Collection[int] | None) -> list[Lineage]:
        """Lineages of the instance, or with these ids (either filter may be None: no filter)."""
        ...

    async def search_paths(
        self,
        query: NameQuery,
        *,
        accounts: Collection[str] | None,
        instance_id: str | None,
        after: PathKey | None,
        limit: int,
    ) -> list[PathKey]:
        """At most ``limit`` paths, ordered and greater than ``after``, whose name matches in some
        indexed point of the lineages of ``accounts`` (None: every account) and ``instance_id``
        (None: every instance). Liveness of the points is the caller's to check."""
        ...

    async def path_changes(self, keys: Collection[PathKey]) -> list[SearchChange]:
        """Every change of these paths, ordered by (lineage_id, path, seq)."""
        ...

    async def lineage_points(self, lineage_ids: Collection[int]) -> list[LineagePoint]:
        """The indexed points of these lineages, ordered by (lineage_id, seq)."""
        ...

    async def prunable_lineages(self, limit: int) -> list[int]:
        """Up to ``limit`` lineages with a point expired since their last prune."""
        ...

    async def tree_entry_type(self, place: TreePlace, path: str) -> int | None:
        """The ``EntryType`` of the entry at the non-empty ``path`` in the point at ``place``, or None."""
        ...

    async def tree_children(
        self, point_id: str, place: TreePlace, parent: str, *, after: str, limit: int
    ) -> list[EntryRow]:
        """``list_children`` of the point at ``place``, read from its lineage's tree changes."""
        ...

    async def list_children(self, point_id: str, parent: str, *, after: str, limit: int) -> list[EntryRow]:
        """At most ``limit`` entries of directory ``parent`` with a name greater than ``after``.

        Sorted by name in code point (UTF-8 byte) order.
        """
        ...
