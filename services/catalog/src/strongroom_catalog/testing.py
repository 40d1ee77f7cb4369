"""In-memory fake of the catalog repository, for unit tests.

It passes the same contract suite as the PostgreSQL adapter. Transactions are
serialized by a lock and roll back by restoring a snapshot of the state.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from google.protobuf.message import Message
from strongroom_platform.testing import InMemoryTransactions, claim_once, record_event

from strongroom_catalog.model import EntryRow, PointRecord, RetentionCandidate, VersionRecord


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


class InMemoryCatalogTx:
    def __init__(self, state: _State) -> None:
        self._s = state

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
        existing = s.points.get(point.point_id)
        if existing is None:
            s.points[point.point_id] = dataclasses.replace(point, browsable=False, index_error=None, expired=False)
        else:
            s.points[point.point_id] = dataclasses.replace(
                point, browsable=existing.browsable, index_error=existing.index_error, expired=False
            )

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

    async def expire_version(self, version_id: str, at: dt.datetime) -> list[str] | None:
        version = self._s.versions.get(version_id)
        if version is None or version.expired_at is not None:
            return None
        self._s.versions[version_id] = dataclasses.replace(version, expired_at=at)
        point_ids = sorted(p.point_id for p in self._s.points.values() if p.version_id == version_id)
        for point_id in point_ids:
            self._s.entries.pop(point_id, None)
            self._s.points[point_id] = dataclasses.replace(self._s.points[point_id], browsable=False)
        return point_ids

    async def enqueue(self, topic: str, key: str, event: Message) -> None:
        record_event(self._s.outbox, topic, key, event)


def _with_expiry(state: _State, point: PointRecord | None) -> PointRecord | None:
    if point is None:
        return None
    return dataclasses.replace(point, expired=state.versions[point.version_id].expired_at is not None)


class InMemoryCatalogStore(InMemoryTransactions[_State]):
    """CatalogStore fake. ``outbox`` lists (topic, key, event) of committed transactions."""

    def __init__(self) -> None:
        super().__init__(_State())

    @property
    def outbox(self) -> list[tuple[str, str, Message]]:
        return self._state.outbox

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryCatalogTx]:
        async with self._transaction_state() as state:
            yield InMemoryCatalogTx(state)

    async def list_versions(self, instance_id: str, *, accounts: Collection[str] | None) -> list[VersionRecord]:
        s = self._state
        live = [
            v
            for v in s.versions.values()
            if v.instance_id == instance_id and v.expired_at is None and (accounts is None or v.account_id in accounts)
        ]
        live.sort(key=lambda v: (v.created_at, v.version_id), reverse=True)
        result = []
        for version in live:
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

    async def list_children(self, point_id: str, parent: str, *, after: str, limit: int) -> list[EntryRow]:
        rows = [
            row
            for (row_parent, name), row in self._state.entries.get(point_id, {}).items()
            if row_parent == parent and name > after
        ]
        rows.sort(key=lambda row: row.name)
        return rows[:limit]

    async def retention_candidates(self, cutoff: dt.datetime) -> list[RetentionCandidate]:
        s = self._state
        newest: dict[str, tuple[dt.datetime, str]] = {}
        for v in s.versions.values():
            key = (v.created_at, v.version_id)
            if v.instance_id not in newest or key > newest[v.instance_id]:
                newest[v.instance_id] = key
        candidates = [
            RetentionCandidate(
                version=v,
                is_newest=newest[v.instance_id] == (v.created_at, v.version_id),
                keep_latest=s.keep_latest.get(v.instance_id, True),
            )
            for v in s.versions.values()
            if v.expired_at is None and v.created_at <= cutoff
        ]
        candidates.sort(key=lambda c: (c.version.created_at, c.version.version_id))
        return candidates
