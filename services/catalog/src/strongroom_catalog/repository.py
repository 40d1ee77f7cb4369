"""PostgreSQL adapter of :class:`~strongroom_catalog.ports.CatalogStore` (schema ``catalog``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager

import asyncpg
from strongroom_platform import db

from strongroom_catalog.model import (
    EntryRow,
    ExpiredVersion,
    Hold,
    InstanceState,
    Lineage,
    LineagePoint,
    PathKey,
    PointRecord,
    SearchChange,
    SearchState,
    TreePlace,
    VersionRecord,
)
from strongroom_catalog.repository_search import NAME_PROBE_LIMIT, PgSearchReads
from strongroom_catalog.repository_tree import PgTreeReads, PgTreeTx

_ENTRY_COLUMNS = ("point_id", "parent", "name", "type", "mode", "uid", "gid", "size", "mtime_ns", "link_target")

# Rows are immutable (ADR 0031): a point's index state is its newest outcome row, a version's
# expiry its row in version_expirations; an expired point is never browsable.
_POINT_SELECT = """
SELECT p.point_id, p.version_id, p.instance_id, p.account_id, p.mount_point, p.device, p.fs_type,
       p.capacity_bytes, p.manifest_key, p.file_count, p.total_bytes, p.created_at, p.retain_until,
       coalesce(o.browsable, false) AND e.version_id IS NULL AS browsable, o.index_error,
       e.version_id IS NOT NULL AS expired, coalesce(c.canceled, false) AS canceled,
       t.lineage_id AS tree_lineage, t.seq AS tree_seq, t.floor_seq AS tree_floor
FROM points p
JOIN versions v ON v.version_id = p.version_id
LEFT JOIN version_expirations e ON e.version_id = p.version_id
LEFT JOIN tree_points t ON t.point_id = p.point_id
LEFT JOIN LATERAL (
    SELECT canceled FROM instance_cancellations WHERE instance_id = p.instance_id ORDER BY seq DESC LIMIT 1
) c ON true
LEFT JOIN LATERAL (
    SELECT browsable, index_error FROM point_index_outcomes
    WHERE point_id = p.point_id ORDER BY seq DESC LIMIT 1
) o ON true
"""

_VERSION_SELECT = """
SELECT v.version_id, v.instance_id, v.account_id, v.created_at, e.expired_at
FROM versions v LEFT JOIN version_expirations e ON e.version_id = v.version_id
"""

# A canceled instance's versions are hidden from every read (ADR 0040): its newest cancellation row.
_NOT_CANCELED = """
NOT coalesce((SELECT c.canceled FROM instance_cancellations c WHERE c.instance_id = $1
              ORDER BY c.seq DESC LIMIT 1), false)
"""

_HOLD_SELECT = """
SELECT h.hold_id, h.instance_id, h.account_id, h.kind, h.reason, h.placed_by, h.placed_at,
       coalesce(r.released_by, '') AS released_by, r.released_at
FROM holds h LEFT JOIN hold_releases r ON r.hold_id = h.hold_id
"""


_CHANGE_COLUMNS = ("lineage_id", "path", "seq", "name", "type", "size", "mtime_ns")
_STATE_PAGE = 5000

# A path's state in point $2 of lineage $1: its newest change up to $2 (the index's order);
# page by page after $3.
_SEARCH_STATE = """
SELECT DISTINCT ON (path) path, type, size, mtime_ns FROM search_changes
WHERE lineage_id = $1 AND seq <= $2 AND path > $3
ORDER BY path, seq DESC
LIMIT $4
"""


def _hold(row: asyncpg.Record) -> Hold:
    return Hold(**dict(row))


def _point(row: asyncpg.Record) -> PointRecord:
    return PointRecord(
        point_id=row["point_id"],
        version_id=row["version_id"],
        instance_id=row["instance_id"],
        account_id=row["account_id"],
        mount_point=row["mount_point"],
        device=row["device"],
        fs_type=row["fs_type"],
        capacity_bytes=row["capacity_bytes"],
        manifest_key=row["manifest_key"],
        file_count=row["file_count"],
        total_bytes=row["total_bytes"],
        created_at=row["created_at"],
        retain_until=row["retain_until"],
        browsable=row["browsable"],
        index_error=row["index_error"],
        expired=row["expired"],
        canceled=row["canceled"],
        tree=None
        if row["tree_lineage"] is None
        else TreePlace(row["tree_lineage"], row["tree_seq"], row["tree_floor"]),
    )


def _version(row: asyncpg.Record, points: Sequence[PointRecord] = ()) -> VersionRecord:
    return VersionRecord(
        version_id=row["version_id"],
        instance_id=row["instance_id"],
        account_id=row["account_id"],
        created_at=row["created_at"],
        expired_at=row["expired_at"],
        points=tuple(points),
    )


def _entry(row: asyncpg.Record) -> EntryRow:
    return EntryRow(**{column: row[column] for column in _ENTRY_COLUMNS})


class PgCatalogTx(PgTreeTx):
    async def upsert_point(self, point: PointRecord) -> None:
        conn = self._conn
        await conn.execute("INSERT INTO instances (instance_id) VALUES ($1) ON CONFLICT DO NOTHING", point.instance_id)
        await conn.execute(
            "INSERT INTO versions (version_id, instance_id, account_id, created_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING",
            point.version_id,
            point.instance_id,
            point.account_id,
            point.created_at,
        )
        await conn.execute(
            """
            INSERT INTO points (point_id, version_id, instance_id, account_id, mount_point, device, fs_type,
                                capacity_bytes, manifest_key, file_count, total_bytes, created_at, retain_until)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            ON CONFLICT (point_id) DO NOTHING
            """,
            point.point_id,
            point.version_id,
            point.instance_id,
            point.account_id,
            point.mount_point,
            point.device,
            point.fs_type,
            point.capacity_bytes,
            point.manifest_key,
            point.file_count,
            point.total_bytes,
            point.created_at,
            point.retain_until,
        )

    async def get_point(self, point_id: str) -> PointRecord | None:
        # The point's lock (the role may not lock immutable rows FOR UPDATE); expire_due_versions
        # takes it too before it drops the point's index.
        await self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('catalog.point:' || $1, 0))", point_id)
        row = await self._conn.fetchrow(_POINT_SELECT + " WHERE p.point_id = $1", point_id)
        return None if row is None else _point(row)

    async def delete_entries(self, point_id: str) -> None:
        await self._conn.execute("DELETE FROM entries WHERE point_id = $1", point_id)

    async def add_entries(self, rows: Sequence[EntryRow]) -> None:
        if not rows:
            return
        # COPY: one round trip per batch, an order of magnitude faster than INSERTs.
        await self._conn.copy_records_to_table(
            "entries",
            records=[
                (r.point_id, r.parent, r.name, r.type, r.mode, r.uid, r.gid, r.size, r.mtime_ns, r.link_target)
                for r in rows
            ],
            columns=_ENTRY_COLUMNS,
        )

    async def set_index_state(self, point_id: str, *, browsable: bool, error: str | None) -> None:
        await self._conn.execute(
            "INSERT INTO point_index_outcomes (point_id, browsable, index_error) VALUES ($1, $2, $3)",
            point_id,
            browsable,
            error,
        )

    async def set_keep_latest(self, instance_id: str, keep_latest: bool, *, as_of: dt.datetime | None = None) -> bool:
        conn = self._conn
        # Settings of one instance are appended one at a time (the newest row wins).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('catalog.instance:' || $1, 0))", instance_id)
        await conn.execute("INSERT INTO instances (instance_id) VALUES ($1) ON CONFLICT DO NOTHING", instance_id)
        last = await conn.fetchrow(
            "SELECT settings_at FROM keep_latest_settings WHERE instance_id = $1 ORDER BY seq DESC LIMIT 1",
            instance_id,
        )
        last_at: dt.datetime | None = None if last is None else last["settings_at"]
        if as_of is not None and last_at is not None and as_of < last_at:
            return False
        await conn.execute(
            "INSERT INTO keep_latest_settings (instance_id, keep_latest, settings_at) VALUES ($1, $2, $3)",
            instance_id,
            keep_latest,
            as_of if as_of is not None else last_at,
        )
        return True

    async def expire_due_versions(self, limit: int) -> list[ExpiredVersion]:
        rows = await self._conn.fetch(
            "SELECT version_id, instance_id, account_id, expired_at, point_ids FROM expire_due_versions($1)", limit
        )
        return [
            ExpiredVersion(r["version_id"], r["instance_id"], r["account_id"], r["expired_at"], tuple(r["point_ids"]))
            for r in rows
        ]

    async def instance_state(self, instance_id: str) -> InstanceState | None:
        conn = self._conn
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('catalog.instance:' || $1, 0))", instance_id)
        latest = await conn.fetchrow(
            "SELECT account_id, canceled FROM instance_cancellations WHERE instance_id = $1 ORDER BY seq DESC LIMIT 1",
            instance_id,
        )
        versions = await conn.fetch(
            _VERSION_SELECT + ' WHERE v.instance_id = $1 ORDER BY v.created_at DESC, v.version_id COLLATE "C" DESC',
            instance_id,
        )
        if latest is None and not versions:
            return None
        account = latest["account_id"] if latest is not None else versions[0]["account_id"]
        return InstanceState(
            instance_id=instance_id,
            account_id=account,
            canceled=latest is not None and latest["canceled"],
            live_version_ids=tuple(v["version_id"] for v in versions if v["expired_at"] is None),
        )

    async def append_cancellation(
        self, instance_id: str, account_id: str, *, canceled: bool, at: dt.datetime, event_id: str | None, subject: str
    ) -> None:
        await self._conn.execute("INSERT INTO instances (instance_id) VALUES ($1) ON CONFLICT DO NOTHING", instance_id)
        await self._conn.execute(
            "INSERT INTO instance_cancellations (instance_id, account_id, canceled, at, event_id, subject)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
            instance_id,
            account_id,
            canceled,
            at,
            event_id,
            subject,
        )

    async def add_hold(self, hold: Hold) -> None:
        await self._conn.execute(
            "INSERT INTO holds (hold_id, instance_id, account_id, kind, reason, placed_by, placed_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            hold.hold_id,
            hold.instance_id,
            hold.account_id,
            hold.kind,
            hold.reason,
            hold.placed_by,
            hold.placed_at,
        )

    async def get_hold(self, hold_id: str) -> Hold | None:
        row = await self._conn.fetchrow(_HOLD_SELECT + " WHERE h.hold_id = $1", hold_id)
        return None if row is None else _hold(row)

    async def release_hold(self, hold_id: str, *, by: str, at: dt.datetime) -> None:
        await self._conn.execute(
            "INSERT INTO hold_releases (hold_id, released_by, released_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (hold_id) DO NOTHING",
            hold_id,
            by,
            at,
        )

    async def list_holds(
        self,
        instance_id: str,
        *,
        include_released: bool,
        after: tuple[dt.datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[Hold]:
        after_at, after_id = after if after is not None else (None, "")
        rows = await self._conn.fetch(
            _HOLD_SELECT + " WHERE h.instance_id = $1 AND ($2 OR r.hold_id IS NULL)"
            " AND ($3::timestamptz IS NULL OR h.placed_at > $3"
            ' OR (h.placed_at = $3 AND h.hold_id COLLATE "C" > $4::text COLLATE "C"))'
            ' ORDER BY h.placed_at, h.hold_id COLLATE "C" LIMIT $5',
            instance_id,
            include_released,
            after_at,
            after_id,
            limit,
        )
        return [_hold(r) for r in rows]

    async def search_lineage(self, instance_id: str, account_id: str, mount_point: str) -> tuple[int, int]:
        conn = self._conn
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('catalog.search-lineage:' || $1 || ':' || $2, 0))",
            instance_id,
            mount_point,
        )
        await conn.execute(
            "INSERT INTO search_lineages (instance_id, account_id, mount_point) VALUES ($1, $2, $3)"
            " ON CONFLICT (instance_id, mount_point) DO NOTHING",
            instance_id,
            account_id,
            mount_point,
        )
        row = await conn.fetchrow(
            "SELECT l.lineage_id, coalesce((SELECT max(seq) FROM search_points p WHERE p.lineage_id = l.lineage_id), 0)"
            " AS head FROM search_lineages l WHERE l.instance_id = $1 AND l.mount_point = $2",
            instance_id,
            mount_point,
        )
        assert row is not None
        return int(row["lineage_id"]), int(row["head"])

    async def search_state(self, lineage_id: int, seq: int) -> AsyncIterator[SearchState]:
        after = ""
        while True:
            rows = await self._conn.fetch(_SEARCH_STATE, lineage_id, seq, after, _STATE_PAGE)
            for r in rows:
                if r["type"] != 0:
                    yield SearchState(r["path"], r["type"], r["size"], r["mtime_ns"])
            if len(rows) < _STATE_PAGE:
                return
            after = rows[-1]["path"]

    async def add_search_point(self, lineage_id: int, seq: int, point_id: str) -> bool:
        status = await self._conn.execute(
            "INSERT INTO search_points (lineage_id, seq, point_id) VALUES ($1, $2, $3)"
            " ON CONFLICT (point_id) DO NOTHING",
            lineage_id,
            seq,
            point_id,
        )
        return bool(status == "INSERT 0 1")

    async def add_search_changes(self, rows: Sequence[SearchChange]) -> None:
        if not rows:
            return
        await self._conn.copy_records_to_table(
            "search_changes",
            records=[(r.lineage_id, r.path, r.seq, r.name, r.type, r.size, r.mtime_ns) for r in rows],
            columns=_CHANGE_COLUMNS,
        )
        # Sorted: concurrent indexers insert shared names in one order (no deadlock).
        names = sorted({r.name for r in rows if r.type != 0})
        await self._conn.execute(
            "INSERT INTO search_names (name) SELECT u FROM unnest($1::text[]) AS u"
            ' WHERE NOT EXISTS (SELECT 1 FROM search_names n WHERE n.name = u COLLATE "C")'
            " ORDER BY 1 ON CONFLICT DO NOTHING",
            names,
        )

    async def lineage_point(self, lineage_id: int, seq: int) -> PointRecord | None:
        row = await self._conn.fetchrow(
            _POINT_SELECT + " JOIN search_points s ON s.point_id = p.point_id WHERE s.lineage_id = $1 AND s.seq = $2",
            lineage_id,
            seq,
        )
        return None if row is None else _point(row)


class PgCatalogStore(PgTreeReads, PgSearchReads):
    """The catalog's tables, through a pool whose search_path is the catalog schema."""

    def __init__(self, pool: asyncpg.Pool, *, name_probe_limit: int = NAME_PROBE_LIMIT) -> None:
        """``name_probe_limit``: see :data:`NAME_PROBE_LIMIT` (0: globs always scan the rows, as
        before ADR 0057; ``bench/search.py`` compares the two)."""
        self._pool = pool
        self._name_probe_limit = name_probe_limit

    def transaction(self) -> AbstractAsyncContextManager[PgCatalogTx]:
        return db.transaction(self._pool, PgCatalogTx)

    async def list_versions(
        self,
        instance_id: str,
        *,
        accounts: Collection[str] | None,
        after: tuple[dt.datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[VersionRecord]:
        account_list = None if accounts is None else list(accounts)
        after_at, after_id = after if after is not None else (None, "")
        async with self._pool.acquire() as conn:
            versions = await conn.fetch(
                _VERSION_SELECT + " WHERE v.instance_id = $1 AND e.version_id IS NULL"
                " AND ($2::text[] IS NULL OR v.account_id = ANY($2::text[]))"
                " AND ($3::timestamptz IS NULL OR v.created_at < $3"
                ' OR (v.created_at = $3 AND v.version_id COLLATE "C" < $4::text COLLATE "C")) AND'
                + _NOT_CANCELED
                + ' ORDER BY v.created_at DESC, v.version_id COLLATE "C" DESC LIMIT $5',
                instance_id,
                account_list,
                after_at,
                after_id,
                limit,
            )
            points = await conn.fetch(
                _POINT_SELECT + " WHERE p.version_id = ANY($1::text[])"
                ' ORDER BY p.mount_point COLLATE "C", p.point_id COLLATE "C"',
                [v["version_id"] for v in versions],
            )
        by_version: dict[str, list[PointRecord]] = {}
        for row in points:
            by_version.setdefault(row["version_id"], []).append(_point(row))
        return [_version(v, by_version.get(v["version_id"], [])) for v in versions]

    async def get_point(self, point_id: str) -> PointRecord | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(_POINT_SELECT + " WHERE p.point_id = $1", point_id)
        return None if row is None else _point(row)

    async def entry_type(self, point_id: str, path: str) -> int | None:
        parent, _, name = path.rpartition("/")
        async with self._pool.acquire() as conn:
            value = await conn.fetchval(
                "SELECT type FROM entries WHERE point_id = $1 AND parent = $2 AND name = $3", point_id, parent, name
            )
        return None if value is None else int(value)

    async def instance_account(self, instance_id: str) -> str | None:
        async with self._pool.acquire() as conn:
            value = await conn.fetchval("SELECT account_id FROM versions WHERE instance_id = $1 LIMIT 1", instance_id)
        return None if value is None else str(value)

    async def search_lineages(self, *, instance_id: str | None, lineage_ids: Collection[int] | None) -> list[Lineage]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT lineage_id, instance_id, account_id, mount_point FROM search_lineages"
                " WHERE ($1::text IS NULL OR instance_id = $1) AND ($2::bigint[] IS NULL OR lineage_id = ANY($2))"
                " ORDER BY lineage_id",
                instance_id,
                None if lineage_ids is None else list(lineage_ids),
            )
        return [Lineage(**dict(r)) for r in rows]

    async def path_changes(self, keys: Collection[PathKey]) -> list[SearchChange]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT c.lineage_id, c.path, c.seq, c.type, c.size, c.mtime_ns"
                " FROM unnest($1::bigint[], $2::text[]) AS k (lineage_id, path)"
                ' JOIN search_changes c ON c.lineage_id = k.lineage_id AND c.path = k.path COLLATE "C"'
                " ORDER BY c.lineage_id, c.path, c.seq",
                [k.lineage_id for k in keys],
                [k.path for k in keys],
            )
        return [SearchChange(**dict(r)) for r in rows]

    async def lineage_points(self, lineage_ids: Collection[int]) -> list[LineagePoint]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT s.lineage_id, s.seq, q.* FROM search_points s"
                " JOIN LATERAL (" + _POINT_SELECT + " WHERE p.point_id = s.point_id) q ON true"
                " WHERE s.lineage_id = ANY($1::bigint[]) ORDER BY s.lineage_id, s.seq",
                list(lineage_ids),
            )
        return [LineagePoint(r["lineage_id"], r["seq"], _point(r)) for r in rows]

    async def list_children(self, point_id: str, parent: str, *, after: str, limit: int) -> list[EntryRow]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT point_id, parent, name, type, mode, uid, gid, size, mtime_ns, link_target FROM entries"
                " WHERE point_id = $1 AND parent = $2 AND name > $3 ORDER BY name LIMIT $4",
                point_id,
                parent,
                after,
                limit,
            )
        return [_entry(r) for r in rows]
