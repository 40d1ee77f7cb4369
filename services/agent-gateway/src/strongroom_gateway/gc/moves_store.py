"""Persistence of generational moves (ADR 0042, update of 2026-12-06), part of the gateway's unit of work.

Like ``gc.repack_store``: the methods are on ``ports.GatewayTx``; the adapters are mixins of
``PgGatewayTx`` and ``InMemoryGatewayTx``. The move itself is ``gateway.move_chunks`` (a ``SECURITY
DEFINER`` function, ``gc.moves_schema``); the fake checks what it checks.

A point is the *newest* of its lineage when no live point of the same account, instance and mount
point was created after it (ties by point id).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import asyncpg

from strongroom_gateway.gc.repack_store import move_rows, stage_move, staging_refused
from strongroom_gateway.gc.store import record_epoch

if TYPE_CHECKING:  # ports imports this module
    from strongroom_gateway.ports import ChunkLocation, Pack, Point
    from strongroom_gateway.testing import _State as _MemoryState


@dataclasses.dataclass(frozen=True, slots=True)
class HeatCandidate:
    """A pack an older live point references and a newest point too; ``newest_at``: the latest
    newest point referencing it."""

    pack: Pack
    newest_at: dt.datetime


class MoveTx(Protocol):
    async def heat_candidates(
        self, created_before: dt.datetime, measured_before: dt.datetime, limit: int
    ) -> list[HeatCandidate]:
        """Packs created before ``created_before``, neither condemned, repacked nor reclaimed, of
        accounts whose live points all have references, referenced by a live point that is not the
        newest of its lineage and by one that is, which were never measured or were last measured
        before ``measured_before`` against an older newest point (oldest first)."""
        ...

    async def newest_references(self, pack_ids: Sequence[str]) -> list[tuple[str, Point]]:
        """(pack id, point) for every newest point of a lineage referencing one of those packs."""
        ...

    async def record_heat(self, pack_id: str, newest_at: dt.datetime, hot_bytes: int) -> None:
        """Remember the measure (once per newest point)."""
        ...

    async def move_chunks(self, new_pack: Pack, sources: Sequence[str], chunks: Sequence[ChunkLocation]) -> bool:
        """Record ``new_pack`` (already stored, no chunk rows) and move ``chunks`` (their new location
        in it) from ``sources``, keeping the sources' other rows (``gateway.move_chunks``). False,
        with no row moved, when the function refuses."""
        ...


_LIVE = "NOT EXISTS (SELECT 1 FROM point_expirations e WHERE e.point_id = {0}.point_id)"
_NEWEST = (
    "NOT EXISTS (SELECT 1 FROM points o WHERE o.account_id = {0}.account_id AND o.instance_id = {0}.instance_id"
    " AND o.mount_point = {0}.mount_point AND (o.created_at, o.point_id) > ({0}.created_at, {0}.point_id)"
    " AND " + _LIVE.format("o") + ")"
)


class PgMoveTx:
    """The PostgreSQL side (``self._conn`` is the transaction's connection)."""

    _conn: asyncpg.Connection

    async def heat_candidates(
        self, created_before: dt.datetime, measured_before: dt.datetime, limit: int
    ) -> list[HeatCandidate]:
        from strongroom_gateway.repository import _PACK_SELECT, _pack

        rows = await self._conn.fetch(
            "WITH refs AS ("
            " SELECT pp.pack_id, pt.created_at, (" + _NEWEST.format("pt") + ") AS newest"
            " FROM point_packs pp JOIN points pt ON pt.point_id = pp.point_id WHERE " + _LIVE.format("pt") + "),"
            " hot AS (SELECT pack_id, max(created_at) FILTER (WHERE newest) AS newest_at,"
            "  bool_or(NOT newest) AS older FROM refs GROUP BY pack_id)"
            " SELECT p.*, h.newest_at FROM (" + _PACK_SELECT + ") p JOIN hot h ON h.pack_id = p.pack_id"
            " WHERE h.older AND h.newest_at IS NOT NULL AND p.created_at < $1"
            "  AND NOT EXISTS (SELECT 1 FROM pack_heat m WHERE m.pack_id = p.pack_id"
            "   AND (m.newest_at >= h.newest_at OR m.measured_at > $2))"
            "  AND NOT EXISTS (SELECT 1 FROM pack_condemnations c WHERE c.pack_id = p.pack_id)"
            "  AND NOT EXISTS (SELECT 1 FROM pack_repacks r WHERE r.old_pack_id = p.pack_id)"
            "  AND NOT EXISTS (SELECT 1 FROM points pt WHERE pt.account_id = p.account_id"
            "   AND NOT EXISTS (SELECT 1 FROM point_references r WHERE r.point_id = pt.point_id)"
            "   AND " + _LIVE.format("pt") + ")"
            " ORDER BY p.created_at, p.pack_id LIMIT $3",
            created_before,
            measured_before,
            limit,
        )
        return [HeatCandidate(_pack(r), r["newest_at"]) for r in rows]

    async def newest_references(self, pack_ids: Sequence[str]) -> list[tuple[str, Point]]:
        from strongroom_gateway.repository import _point

        rows = await self._conn.fetch(
            "SELECT pp.pack_id AS referenced_pack, pt.* FROM point_packs pp"
            " JOIN points pt ON pt.point_id = pp.point_id"
            " WHERE pp.pack_id = ANY($1::text[]) AND " + _LIVE.format("pt") + " AND " + _NEWEST.format("pt") + ""
            " ORDER BY pt.created_at, pt.point_id",
            list(pack_ids),
        )
        return [(r["referenced_pack"], _point(r)) for r in rows]

    async def record_heat(self, pack_id: str, newest_at: dt.datetime, hot_bytes: int) -> None:
        await self._conn.execute(
            "INSERT INTO pack_heat (pack_id, newest_at, hot_bytes, measured_at)"
            " VALUES ($1, $2, $3, trusted.now()) ON CONFLICT DO NOTHING",
            pack_id,
            newest_at,
            hot_bytes,
        )

    async def move_chunks(self, new_pack: Pack, sources: Sequence[str], chunks: Sequence[ChunkLocation]) -> bool:
        await stage_move(self._conn, new_pack, sources, chunks)
        return bool(await self._conn.fetchval("SELECT move_chunks($1)", new_pack.pack_id))


class MemoryMoveTx:
    """The in-memory side (``self._s`` is the fake store's state)."""

    _s: _MemoryState
    _trusted_now: Callable[[], dt.datetime]

    def _live(self, point_id: str) -> bool:
        return point_id not in self._s.gc.expirations

    def _account_referenced(self, account_id: str) -> bool:
        return all(
            p.point_id in self._s.gc.point_packs or not self._live(p.point_id)
            for p in self._s.points.values()
            if p.account_id == account_id
        )

    def _newest(self) -> set[str]:
        best: dict[tuple[str, str, str], Point] = {}
        for p in self._s.points.values():
            if self._live(p.point_id):
                lineage = (p.account_id, p.instance_id, p.mount_point)
                current = best.get(lineage)
                if current is None or (p.created_at, p.point_id) > (current.created_at, current.point_id):
                    best[lineage] = p
        return {p.point_id for p in best.values()}

    async def heat_candidates(
        self, created_before: dt.datetime, measured_before: dt.datetime, limit: int
    ) -> list[HeatCandidate]:
        gc, newest = self._s.gc, self._newest()
        newest_at: dict[str, dt.datetime] = {}
        older: set[str] = set()
        for pid, packs in gc.point_packs.items():
            if not self._live(pid):
                continue
            created = self._s.points[pid].created_at
            for pack_id in packs:
                if pid in newest:
                    newest_at[pack_id] = max(newest_at.get(pack_id, created), created)
                else:
                    older.add(pack_id)
        last: dict[str, tuple[dt.datetime, dt.datetime]] = {}  # pack -> (latest newest_at, latest measure)
        for (pid, n), measured in gc.heat_measured.items():
            seen = last.get(pid)
            last[pid] = (n, measured) if seen is None else (max(seen[0], n), max(seen[1], measured))
        out: list[HeatCandidate] = []
        for pack in sorted(self._s.packs.values(), key=lambda p: (p.created_at, p.pack_id)):
            at = newest_at.get(pack.pack_id)
            if len(out) >= limit:
                break
            seen = last.get(pack.pack_id)
            if (
                at is not None
                and pack.pack_id in older
                and pack.created_at < created_before
                and (seen is None or (seen[0] < at and seen[1] <= measured_before))
                and pack.pack_id not in gc.condemned
                and pack.pack_id not in gc.repacked
                and self._account_referenced(pack.account_id)
            ):
                out.append(HeatCandidate(pack, at))
        return out

    async def newest_references(self, pack_ids: Sequence[str]) -> list[tuple[str, Point]]:
        wanted, newest = set(pack_ids), self._newest()
        out = [
            (pack_id, self._s.points[pid])
            for pid, packs in self._s.gc.point_packs.items()
            if pid in newest
            for pack_id in sorted(packs & wanted)
        ]
        return sorted(out, key=lambda r: (r[1].created_at, r[1].point_id))

    async def record_heat(self, pack_id: str, newest_at: dt.datetime, hot_bytes: int) -> None:
        gc = self._s.gc
        if (pack_id, newest_at) not in gc.heat:
            gc.heat[(pack_id, newest_at)] = hot_bytes
            gc.heat_measured[(pack_id, newest_at)] = self._trusted_now()

    async def move_chunks(self, new_pack: Pack, sources: Sequence[str], chunks: Sequence[ChunkLocation]) -> bool:
        s, gc = self._s, self._s.gc
        s.packs.setdefault(new_pack.pack_id, new_pack)
        account = new_pack.account_id
        source_set = set(sources)
        referencing = {pid for pid, packs in gc.point_packs.items() if packs & source_set and self._live(pid)}
        refused = (
            staging_refused(s, new_pack, source_set, chunks)
            or new_pack.pack_id in gc.moved
            or any(s.points[pid].retain_until > new_pack.retain_until for pid in referencing)
            or not self._account_referenced(account)
        )
        if refused:
            return False
        move_rows(s, new_pack, chunks)
        for pid in referencing:
            gc.point_packs[pid].add(new_pack.pack_id)
        for p in source_set:
            gc.moved.setdefault(p, set()).add(new_pack.pack_id)
        record_epoch(gc, account, new_pack.pack_id, sorted(source_set))
        return True
