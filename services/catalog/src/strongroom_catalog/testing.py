"""In-memory fake of the catalog repository, for unit tests.

It passes the same contract suite as the PostgreSQL adapter. Transactions are
serialized by a lock and roll back by restoring a snapshot of the state.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from google.protobuf.message import Message
from strongroom_platform.clock import Clock
from strongroom_platform.paging import keyset_slice
from strongroom_platform.testing import InMemoryTransactions, claim_once, record_event

from strongroom_catalog.model import (
    REMOVED,
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
from strongroom_catalog.retention import RETENTION_PERIOD


@dataclass
class _State:
    keep_latest: dict[str, bool] = field(default_factory=dict)
    # instance_id -> time of the last applied setting (``set_keep_latest(..., as_of=)``)
    settings_at: dict[str, dt.datetime] = field(default_factory=dict)
    versions: dict[str, VersionRecord] = field(default_factory=dict)
    points: dict[str, PointRecord] = field(default_factory=dict)
    # point_id -> (parent, name) -> row
    entries: dict[str, dict[tuple[str, str], EntryRow]] = field(default_factory=dict)
    processed: set[tuple[str, str]] = field(default_factory=set)
    outbox: list[tuple[str, str, Message]] = field(default_factory=list)
    # instance_id -> (account_id, canceled) of its newest cancellation row; event ids of cancels applied
    cancellations: dict[str, tuple[str, bool]] = field(default_factory=dict)
    cancel_events: set[str] = field(default_factory=set)
    holds: dict[str, Hold] = field(default_factory=dict)
    # the search index: lineages by id, (lineage_id, seq) -> point_id, (lineage_id, path, seq) -> change
    lineages: dict[int, Lineage] = field(default_factory=dict)
    search_points: dict[tuple[int, int], str] = field(default_factory=dict)
    changes: dict[tuple[int, str, int], SearchChange] = field(default_factory=dict)
    # browse by lineage (ADR 0049): (lineage_id, parent, name, seq) -> change; prune marks per lineage
    tree: dict[tuple[int, str, str, int], TreeChange] = field(default_factory=dict)
    pruned: dict[int, int] = field(default_factory=dict)

    def expired(self, point_id: str) -> bool:
        return self.versions[self.points[point_id].version_id].expired_at is not None

    def canceled(self, instance_id: str) -> bool:
        return self.cancellations.get(instance_id, ("", False))[1]

    def held(self, instance_id: str) -> bool:
        return any(h.instance_id == instance_id and h.active for h in self.holds.values())


class InMemoryCatalogTx:
    def __init__(self, state: _State, trusted_clock: Clock | None) -> None:
        self._s = state
        self._trusted_clock = trusted_clock

    async def claim_event(self, consumer: str, event_id: str) -> bool:
        return claim_once(self._s.processed, consumer, event_id)

    async def upsert_point(self, point: PointRecord) -> None:
        s = self._s
        s.keep_latest.setdefault(point.instance_id, True)
        version = s.versions.get(point.version_id)
        if version is None:
            s.versions[point.version_id] = VersionRecord(
                version_id=point.version_id,
                instance_id=point.instance_id,
                account_id=point.account_id,
                created_at=point.created_at,
                expired_at=None,
            )
        if point.point_id not in s.points:  # an existing point stays as first recorded
            s.points[point.point_id] = dataclasses.replace(point, browsable=False, index_error=None, expired=False)

    async def get_point(self, point_id: str) -> PointRecord | None:
        return _with_expiry(self._s, self._s.points.get(point_id))

    async def delete_entries(self, point_id: str) -> None:
        self._s.entries.pop(point_id, None)

    async def add_entries(self, rows: Sequence[EntryRow]) -> None:
        for row in rows:
            if row.point_id not in self._s.points:
                raise KeyError(f"unknown point {row.point_id}")
            index = self._s.entries.setdefault(row.point_id, {})
            if (row.parent, row.name) in index:
                raise ValueError(f"duplicate entry {row.path!r} in point {row.point_id}")
            index[(row.parent, row.name)] = row

    async def set_index_state(self, point_id: str, *, browsable: bool, error: str | None) -> None:
        point = self._s.points[point_id]
        self._s.points[point_id] = dataclasses.replace(point, browsable=browsable, index_error=error)

    async def set_keep_latest(self, instance_id: str, keep_latest: bool, *, as_of: dt.datetime | None = None) -> bool:
        if as_of is not None:
            last = self._s.settings_at.get(instance_id)
            if last is not None and as_of < last:
                return False
            self._s.settings_at[instance_id] = as_of
        self._s.keep_latest[instance_id] = keep_latest
        return True

    async def expire_due_versions(self, limit: int) -> list[ExpiredVersion]:
        if not 1 <= limit <= 1000:
            raise ValueError(f"max_versions must be between 1 and 1000, got {limit}")
        if self._trusted_clock is None:
            raise RuntimeError("InMemoryCatalogStore(trusted_clock=...) is needed to expire versions")
        s = self._s
        now = self._trusted_clock.now()
        newest: dict[str, tuple[dt.datetime, str]] = {}
        for v in s.versions.values():
            key = (v.created_at, v.version_id)
            if v.instance_id not in newest or key > newest[v.instance_id]:
                newest[v.instance_id] = key

        def locks_passed(version_id: str) -> bool:
            return all(
                p.retain_until is None or p.retain_until <= now for p in s.points.values() if p.version_id == version_id
            )

        due = sorted(
            (
                v
                for v in s.versions.values()
                if v.expired_at is None
                and not s.held(v.instance_id)
                and (
                    (s.canceled(v.instance_id) and locks_passed(v.version_id))
                    or (
                        v.created_at <= now - RETENTION_PERIOD
                        and not (
                            s.keep_latest.get(v.instance_id, True)
                            and newest[v.instance_id] == (v.created_at, v.version_id)
                        )
                    )
                )
            ),
            key=lambda v: (v.created_at, v.version_id),
        )[:limit]
        expired = []
        for version in due:
            s.versions[version.version_id] = dataclasses.replace(version, expired_at=now)
            point_ids = tuple(sorted(p.point_id for p in s.points.values() if p.version_id == version.version_id))
            for point_id in point_ids:
                s.entries.pop(point_id, None)
            expired.append(ExpiredVersion(version.version_id, version.instance_id, version.account_id, now, point_ids))
        return expired

    async def enqueue(self, topic: str, key: str, event: Message) -> None:
        record_event(self._s.outbox, topic, key, event)

    async def instance_state(self, instance_id: str) -> InstanceState | None:
        s = self._s
        versions = sorted(
            (v for v in s.versions.values() if v.instance_id == instance_id),
            key=lambda v: (v.created_at, v.version_id),
            reverse=True,
        )
        latest = s.cancellations.get(instance_id)
        if latest is None and not versions:
            return None
        account = latest[0] if latest is not None else versions[0].account_id
        return InstanceState(
            instance_id=instance_id,
            account_id=account,
            canceled=s.canceled(instance_id),
            live_version_ids=tuple(v.version_id for v in versions if v.expired_at is None),
        )

    async def append_cancellation(
        self, instance_id: str, account_id: str, *, canceled: bool, at: dt.datetime, event_id: str | None, subject: str
    ) -> None:
        if event_id is not None:
            if event_id in self._s.cancel_events:
                return
            self._s.cancel_events.add(event_id)
        self._s.cancellations[instance_id] = (account_id, canceled)

    async def add_hold(self, hold: Hold) -> None:
        if hold.hold_id in self._s.holds:
            raise ValueError(f"duplicate hold {hold.hold_id}")
        self._s.holds[hold.hold_id] = hold

    async def get_hold(self, hold_id: str) -> Hold | None:
        return self._s.holds.get(hold_id)

    async def release_hold(self, hold_id: str, *, by: str, at: dt.datetime) -> None:
        hold = self._s.holds[hold_id]
        if hold.active:
            self._s.holds[hold_id] = dataclasses.replace(hold, released_by=by, released_at=at)

    async def list_holds(
        self,
        instance_id: str,
        *,
        include_released: bool,
        after: tuple[dt.datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[Hold]:
        found = (h for h in self._s.holds.values() if h.instance_id == instance_id and (include_released or h.active))
        return keyset_slice(found, lambda h: (h.placed_at, h.hold_id), after, limit=limit)

    async def search_lineage(self, instance_id: str, account_id: str, mount_point: str) -> tuple[int, int]:
        s = self._s
        found = [x for x in s.lineages.values() if (x.instance_id, x.mount_point) == (instance_id, mount_point)]
        if found:
            lineage = found[0]
        else:
            lineage = Lineage(len(s.lineages) + 1, instance_id, account_id, mount_point)
            s.lineages[lineage.lineage_id] = lineage
        head = max((seq for (lid, seq) in s.search_points if lid == lineage.lineage_id), default=0)
        return lineage.lineage_id, head

    async def search_state(self, lineage_id: int, seq: int) -> AsyncIterator[SearchState]:
        newest: dict[str, SearchChange] = {}
        for (lid, path, at), change in sorted(self._s.changes.items()):
            if lid == lineage_id and at <= seq:
                newest[path] = change
        for path in sorted(newest, key=lambda p: p.encode()):
            change = newest[path]
            if change.type != REMOVED:
                yield SearchState(path, change.type, change.size, change.mtime_ns)

    async def add_search_point(self, lineage_id: int, seq: int, point_id: str) -> bool:
        s = self._s
        if point_id in s.search_points.values():
            return False
        if (lineage_id, seq) in s.search_points:
            raise ValueError(f"seq {seq} of lineage {lineage_id} is taken")
        s.search_points[(lineage_id, seq)] = point_id
        return True

    async def add_search_changes(self, rows: Sequence[SearchChange]) -> None:
        for row in rows:
            key = (row.lineage_id, row.path, row.seq)
            if key in self._s.changes:
                raise ValueError(f"duplicate change {key}")
            self._s.changes[key] = row

    async def lineage_point(self, lineage_id: int, seq: int) -> PointRecord | None:
        point_id = self._s.search_points.get((lineage_id, seq))
        return None if point_id is None else _with_expiry(self._s, self._s.points.get(point_id))

    async def add_tree_point(self, point_id: str, place: TreePlace) -> None:
        s = self._s
        if any(
            p.tree is not None and (p.tree.lineage_id, p.tree.seq) == (place.lineage_id, place.seq)
            for p in s.points.values()
        ):
            raise ValueError(f"seq {place.seq} of lineage {place.lineage_id} is taken")
        s.points[point_id] = dataclasses.replace(s.points[point_id], tree=place)

    async def add_tree_changes(self, rows: Sequence[TreeChange]) -> None:
        for row in rows:
            key = (row.lineage_id, row.parent, row.name, row.seq)
            if key in self._s.tree:
                raise ValueError(f"duplicate tree change {key}")
            self._s.tree[key] = row

    async def prune_window(self, lineage_id: int) -> PruneWindow | None:
        s = self._s
        seqs = {seq: pid for (lid, seq), pid in s.search_points.items() if lid == lineage_id}
        if lineage_id not in s.lineages:
            return None
        live = [seq for seq, pid in seqs.items() if not s.expired(pid)]
        upto = min(live, default=max(seqs, default=0) + 1)
        after = s.pruned.get(lineage_id, 1)
        if upto <= after:
            return None
        place = s.points[seqs[upto]].tree if upto in seqs else None
        return PruneWindow(lineage_id, after, upto, upto if place is None else place.floor, not live)

    async def prune_changes(self, window: PruneWindow, limit: int) -> int:
        s = self._s
        lid, after, upto = window.lineage_id, window.after, window.upto
        tree = [k for k in s.tree if k[0] == lid and k[3] < window.floor]
        if not tree and window.everything:
            everything = [k for k in s.changes if k[0] == lid and k[2] < upto][:limit]
            for change in everything:
                del s.changes[change]
            if everything:
                return len(everything)
        if not tree:
            newer = [k for k in s.tree if k[0] == lid and after < k[3] <= upto]
            tree = [k for k in s.tree for n in newer if k[:3] == n[:3] and k[3] < n[3]]
            tree = tree or [k for k in newer if s.tree[k].type == REMOVED]
        for key in list(dict.fromkeys(tree))[:limit]:
            del s.tree[key]
        if tree:
            return min(len(set(tree)), limit)
        fresh = [k for k in s.changes if k[0] == lid and after < k[2] <= upto]
        search = [k for k in s.changes for n in fresh if k[:2] == n[:2] and k[2] < n[2]]
        search = search or [k for k in fresh if s.changes[k].type == REMOVED]
        for change in list(dict.fromkeys(search))[:limit]:
            del s.changes[change]
        return min(len(set(search)), limit)

    async def mark_pruned(self, window: PruneWindow) -> None:
        s = self._s
        s.pruned[window.lineage_id] = max(s.pruned.get(window.lineage_id, 1), window.upto)


def _matches(query: NameQuery, name: str) -> bool:
    if query.exact is not None:
        return name == query.exact
    assert query.regex is not None
    return re.search(query.regex, name, re.IGNORECASE if query.ignore_case else 0) is not None


def _with_expiry(state: _State, point: PointRecord | None) -> PointRecord | None:
    if point is None:
        return None
    expired = state.versions[point.version_id].expired_at is not None
    return dataclasses.replace(
        point, expired=expired, browsable=point.browsable and not expired, canceled=state.canceled(point.instance_id)
    )


class InMemoryCatalogStore(InMemoryTransactions[_State]):
    """CatalogStore fake. ``outbox`` lists (topic, key, event) of committed transactions.

    ``trusted_clock`` stands for the database's trusted time (needed by ``expire_due_versions``).
    """

    def __init__(self, trusted_clock: Clock | None = None) -> None:
        super().__init__(_State())
        self._trusted_clock = trusted_clock

    @property
    def outbox(self) -> list[tuple[str, str, Message]]:
        return self._state.outbox

    def mark_expired(self, version_id: str, at: dt.datetime) -> None:
        """Test set-up: the version expired at ``at`` (as ``expire_due_versions`` would have marked it)."""
        version = self._state.versions[version_id]
        self._state.versions[version_id] = dataclasses.replace(version, expired_at=at)
        for point in self._state.points.values():
            if point.version_id == version_id:
                self._state.entries.pop(point.point_id, None)

    def keep_latest(self, instance_id: str) -> bool:
        """The instance's keep-at-least-one flag, as retention sees it (on until a setting arrives)."""
        return self._state.keep_latest.get(instance_id, True)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryCatalogTx]:
        async with self._transaction_state() as state:
            yield InMemoryCatalogTx(state, self._trusted_clock)

    async def list_versions(
        self,
        instance_id: str,
        *,
        accounts: Collection[str] | None,
        after: tuple[dt.datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[VersionRecord]:
        s = self._state
        live = [
            v
            for v in s.versions.values()
            if v.instance_id == instance_id
            and v.expired_at is None
            and (accounts is None or v.account_id in accounts)
            and not s.canceled(instance_id)
            and (after is None or (v.created_at, v.version_id.encode()) < (after[0], after[1].encode()))
        ]
        # bytewise ids, as PostgreSQL's COLLATE "C"
        live.sort(key=lambda v: (v.created_at, v.version_id.encode()), reverse=True)
        result = []
        for version in live[:limit]:
            points = sorted(
                (p for p in s.points.values() if p.version_id == version.version_id),
                key=lambda p: (p.mount_point, p.point_id),
            )
            result.append(dataclasses.replace(version, points=tuple(points)))
        return result

    async def get_point(self, point_id: str) -> PointRecord | None:
        return _with_expiry(self._state, self._state.points.get(point_id))

    async def entry_type(self, point_id: str, path: str) -> int | None:
        parent, _, name = path.rpartition("/")
        row = self._state.entries.get(point_id, {}).get((parent, name))
        return None if row is None else row.type

    async def instance_account(self, instance_id: str) -> str | None:
        for version in self._state.versions.values():
            if version.instance_id == instance_id:
                return version.account_id
        return None

    async def search_lineages(self, *, instance_id: str | None, lineage_ids: Collection[int] | None) -> list[Lineage]:
        return [
            lineage
            for lid, lineage in sorted(self._state.lineages.items())
            if (instance_id is None or lineage.instance_id == instance_id)
            and (lineage_ids is None or lid in lineage_ids)
        ]

    async def search_paths(
        self,
        query: NameQuery,
        *,
        accounts: Collection[str] | None,
        instance_id: str | None,
        after: PathKey | None,
        limit: int,
    ) -> list[PathKey]:
        s = self._state
        found: set[tuple[int, bytes, str]] = set()
        for change in s.changes.values():
            lineage = s.lineages[change.lineage_id]
            if (
                change.type != REMOVED
                and (accounts is None or lineage.account_id in accounts)
                and (instance_id is None or lineage.instance_id == instance_id)
                and _matches(query, change.name)
            ):
                found.add((change.lineage_id, change.path.encode(), change.path))
        start = (-1, b"") if after is None else (after.lineage_id, after.path.encode())
        return [PathKey(lid, path) for lid, raw, path in sorted(found) if (lid, raw) > start][:limit]

    async def path_changes(self, keys: Collection[PathKey]) -> list[SearchChange]:
        wanted = {(k.lineage_id, k.path) for k in keys}
        found = [c for c in self._state.changes.values() if (c.lineage_id, c.path) in wanted]
        return sorted(found, key=lambda c: (c.lineage_id, c.path.encode(), c.seq))

    async def lineage_points(self, lineage_ids: Collection[int]) -> list[LineagePoint]:
        s = self._state
        found = []
        for (lid, seq), point_id in sorted(s.search_points.items()):
            point = _with_expiry(s, s.points.get(point_id))
            if lid in lineage_ids and point is not None:
                found.append(LineagePoint(lid, seq, point))
        return found

    async def prunable_lineages(self, limit: int) -> list[int]:
        s = self._state
        found = []
        for (lid, seq), point_id in sorted(s.search_points.items()):
            if seq == s.pruned.get(lid, 1) and s.expired(point_id):
                found.append(lid)
        return found[:limit]

    def _tree_state(self, place: TreePlace, parent: str) -> dict[str, TreeChange]:
        newest: dict[str, TreeChange] = {}
        for (lid, row_parent, name, seq), change in sorted(self._state.tree.items()):
            if lid == place.lineage_id and row_parent == parent and place.floor <= seq <= place.seq:
                newest[name] = change
        return {name: c for name, c in newest.items() if c.type != REMOVED}

    async def tree_entry_type(self, place: TreePlace, path: str) -> int | None:
        parent, _, name = path.rpartition("/")
        change = self._tree_state(place, parent).get(name)
        return None if change is None else change.type

    async def tree_children(
        self, point_id: str, place: TreePlace, parent: str, *, after: str, limit: int
    ) -> list[EntryRow]:
        state = self._tree_state(place, parent)
        names = sorted((n for n in state if n > after), key=lambda n: n.encode())
        return [state[n].entry(point_id) for n in names[:limit]]

    async def list_children(self, point_id: str, parent: str, *, after: str, limit: int) -> list[EntryRow]:
        rows = [
            row
            for (row_parent, name), row in self._state.entries.get(point_id, {}).items()
            if row_parent == parent and name > after
        ]
        rows.sort(key=lambda row: row.name)
        return rows[:limit]
