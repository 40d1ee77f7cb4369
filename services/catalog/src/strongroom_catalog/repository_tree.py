"""PostgreSQL adapter of browse by lineage (ADR 0049): ``tree_changes``, ``tree_points``, pruning.

Mixed into ``repository.PgCatalogTx`` and ``repository.PgCatalogStore``.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from strongroom_platform.db import PgTransaction

from strongroom_catalog.model import EntryRow, PruneWindow, TreeChange, TreePlace

_TREE_COLUMNS = (
    "lineage_id",
    "seq",
    "parent",
    "name",
    "type",
    "mode",
    "uid",
    "gid",
    "size",
    "mtime_ns",
    "link_target",
)

# The children of directory $2 in the point at (lineage $1, floor $3, seq $4), after name $5: per
# name its newest row of the point's run of deltas, tombstones left out. The index
# (lineage_id, parent, name, seq DESC) returns them in this order, so LIMIT stops the scan.
_TREE_CHILDREN = """
SELECT $6::text AS point_id, parent, name, type, mode, uid, gid, size, mtime_ns, link_target FROM (
    SELECT DISTINCT ON (name) parent, name, type, mode, uid, gid, size, mtime_ns, link_target
    FROM tree_changes
    WHERE lineage_id = $1 AND parent = $2 AND seq BETWEEN $3 AND $4 AND name > $5
    ORDER BY name, seq DESC
) t
WHERE type <> 0
ORDER BY name
LIMIT $7
"""

# Pruning (ADR 0049), at most $4 rows per statement (seq > 0: the predicate of the seq indexes):
# browse rows before the floor ($2), then rows
# replaced by a row of a point in ($2, $3] (the same entry or path at a later seq up to $3), then
# the tombstones of those points (nothing older is left for them to hide).
_PRUNE_BEFORE_FLOOR = """
DELETE FROM tree_changes WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM tree_changes WHERE lineage_id = $1 AND seq < $2 AND seq > 0 LIMIT $3))
"""
# no point of the lineage is live: no search row serves any
_PRUNE_SEARCH_BEFORE = """
DELETE FROM search_changes WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM search_changes WHERE lineage_id = $1 AND seq < $2 AND seq > 0 LIMIT $3))
"""
_PRUNE_IN_WINDOW = (
    """
DELETE FROM tree_changes WHERE ctid = ANY(ARRAY(
    SELECT o.ctid FROM tree_changes n JOIN tree_changes o
      ON o.lineage_id = n.lineage_id AND o.parent = n.parent AND o.name = n.name AND o.seq < n.seq
    WHERE n.lineage_id = $1 AND n.seq > $2 AND n.seq <= $3 AND n.seq > 0 LIMIT $4))
""",
    """
DELETE FROM tree_changes WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM tree_changes WHERE lineage_id = $1 AND seq > $2 AND seq <= $3 AND seq > 0 AND type = 0 LIMIT $4))
""",
    """
DELETE FROM search_changes WHERE ctid = ANY(ARRAY(
    SELECT o.ctid FROM search_changes n JOIN search_changes o
      ON o.lineage_id = n.lineage_id AND o.path = n.path AND o.seq < n.seq
    WHERE n.lineage_id = $1 AND n.seq > $2 AND n.seq <= $3 AND n.seq > 0 LIMIT $4))
""",
    """
DELETE FROM search_changes WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM search_changes WHERE lineage_id = $1 AND seq > $2 AND seq <= $3 AND seq > 0 AND type = 0 LIMIT $4))
""",
)


class PgTreeTx(PgTransaction):
    async def add_tree_point(self, point_id: str, place: TreePlace) -> None:
        await self._conn.execute(
            "INSERT INTO tree_points (point_id, lineage_id, seq, floor_seq) VALUES ($1, $2, $3, $4)",
            point_id,
            place.lineage_id,
            place.seq,
            place.floor,
        )

    async def add_tree_changes(self, rows: Sequence[TreeChange]) -> None:
        if not rows:
            return
        await self._conn.copy_records_to_table(
            "tree_changes",
            records=[
                (r.lineage_id, r.seq, r.parent, r.name, r.type, r.mode, r.uid, r.gid, r.size, r.mtime_ns, r.link_target)
                for r in rows
            ],
            columns=_TREE_COLUMNS,
        )

    async def prune_window(self, lineage_id: int) -> PruneWindow | None:
        conn = self._conn
        row = await conn.fetchrow(
            "SELECT instance_id, mount_point FROM search_lineages WHERE lineage_id = $1", lineage_id
        )
        if row is None:
            return None
        # the lock indexing takes (search_lineage): no point is added while the window is read
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('catalog.search-lineage:' || $1 || ':' || $2, 0))",
            row["instance_id"],
            row["mount_point"],
        )
        window = await conn.fetchrow(
            """
            SELECT (SELECT min(s.seq) FROM search_points s
                    WHERE s.lineage_id = $1 AND NOT EXISTS (
                        SELECT 1 FROM points p JOIN version_expirations e ON e.version_id = p.version_id
                        WHERE p.point_id = s.point_id)) AS live,
                   (SELECT coalesce(max(seq), 0) + 1 FROM search_points WHERE lineage_id = $1) AS next,
                   coalesce((SELECT max(upto_seq) FROM lineage_prunes WHERE lineage_id = $1), 1) AS after
            """,
            lineage_id,
        )
        assert window is not None
        everything = window["live"] is None
        upto, after = int(window["next"] if everything else window["live"]), int(window["after"])
        if upto <= after:
            return None
        floor = await conn.fetchval(
            "SELECT floor_seq FROM tree_points WHERE lineage_id = $1 AND seq = $2", lineage_id, upto
        )
        # no browse rows of the lineage before a point indexed before ADR 0049 (or past the head)
        return PruneWindow(lineage_id, after, upto, upto if floor is None else int(floor), everything)

    async def prune_changes(self, window: PruneWindow, limit: int) -> int:
        status = await self._conn.execute(_PRUNE_BEFORE_FLOOR, window.lineage_id, window.floor, limit)
        deleted = int(status.split()[-1])
        if not deleted and window.everything:
            status = await self._conn.execute(_PRUNE_SEARCH_BEFORE, window.lineage_id, window.upto, limit)
            deleted = int(status.split()[-1])
        for statement in _PRUNE_IN_WINDOW:
            if deleted:
                break
            status = await self._conn.execute(statement, window.lineage_id, window.after, window.upto, limit)
            deleted = int(status.split()[-1])
        return deleted

    async def mark_pruned(self, window: PruneWindow) -> None:
        await self._conn.execute(
            "INSERT INTO lineage_prunes (lineage_id, upto_seq) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            window.lineage_id,
            window.upto,
        )


class PgTreeReads:
    _pool: asyncpg.Pool

    async def prunable_lineages(self, limit: int) -> list[int]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """
                -- the oldest point not pruned yet has expired
                SELECT s.lineage_id FROM search_points s
                JOIN points p ON p.point_id = s.point_id
                JOIN version_expirations e ON e.version_id = p.version_id
                WHERE s.seq = coalesce(
                    (SELECT max(upto_seq) FROM lineage_prunes r WHERE r.lineage_id = s.lineage_id), 1)
                ORDER BY s.lineage_id LIMIT $1
                """,
                limit,
            )
        return [int(r["lineage_id"]) for r in rows]

    async def tree_entry_type(self, place: TreePlace, path: str) -> int | None:
        parent, _, name = path.rpartition("/")
        async with self._pool.acquire() as conn:
            value = await conn.fetchval(
                "SELECT type FROM tree_changes WHERE lineage_id = $1 AND parent = $2 AND name = $3"
                " AND seq BETWEEN $4 AND $5 ORDER BY seq DESC LIMIT 1",
                place.lineage_id,
                parent,
                name,
                place.floor,
                place.seq,
            )
        return None if not value else int(value)

    async def tree_children(
        self, point_id: str, place: TreePlace, parent: str, *, after: str, limit: int
    ) -> list[EntryRow]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                _TREE_CHILDREN, place.lineage_id, parent, place.floor, place.seq, after, point_id, limit
            )
        return [EntryRow(**dict(r)) for r in rows]
