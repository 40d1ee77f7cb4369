"""Persistence of repacking (ADR 0042), part of the gateway's unit of work.

Like ``gc.store``: the methods are on ``ports.GatewayTx``; the adapters are mixins of
``PgGatewayTx`` and ``InMemoryGatewayTx``. The move itself is ``gateway.repack_pack`` (a ``SECURITY
DEFINER`` function, ``gc.repack_schema``); the fake checks what it checks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import asyncpg

from strongroom_gateway.gc.store import record_epoch

if TYPE_CHECKING:  # ports imports this module
    from strongroom_gateway.ports import ChunkLocation, Pack, Point
    from strongroom_gateway.testing import _State as _MemoryState


@dataclasses.dataclass(frozen=True, slots=True)
class RepackCandidate:
    """A pack some of whose referencing points expired since it was last measured (if ever)."""

    pack: Pack
    expired_references: int


class RepackTx(Protocol):
    async def repack_candidates(self, created_before: dt.datetime, limit: int) -> list[RepackCandidate]:
        """Packs created before ``created_before``, neither condemned, repacked nor reclaimed, of
        accounts whose live points all have references, that more referencing points expired of
        than when they were last measured (oldest first)."""
        ...

    async def chunks_in_packs(self, pack_ids: Sequence[str]) -> list[ChunkLocation]:
        """Every chunk row now in those packs."""
        ...

    async def live_references(self, pack_ids: Sequence[str]) -> list[tuple[str, Point]]:
        """(pack id, live point) for every live point referencing one of those packs."""
        ...

    async def record_liveness(self, pack_id: str, expired_references: int, live_bytes: int) -> None:
        """Remember the measure (once per count of expired references)."""
        ...

    async def repack(
        self, new_pack: Pack, sources: Sequence[str], scanned: Sequence[str], chunks: Sequence[ChunkLocation]
    ) -> bool:
        """Record ``new_pack`` (already stored, no chunk rows) and move ``chunks`` (their new location
        in it) from ``sources`` (``gateway.repack_pack``); ``scanned``: the live points whose manifests
        decided what is live. False, with no row moved, when the function refuses."""
        ...


def chunk_location(row: asyncpg.Record) -> ChunkLocation:
    """A chunk row joined with its pack (chunk_id, pack_id, object_key, offset, length, raw_length,
    compression, format_version, version_id) as a :class:`ChunkLocation`."""
    from strongroom_gateway.ports import ChunkLocation

    return ChunkLocation(
        chunk_id=bytes(row["chunk_id"]),
        pack_id=row["pack_id"],
        object_key=row["object_key"],
        offset=row["offset"],
        length=row["length"],
        raw_length=row["raw_length"],
        compression=row["compression"],
        pack_format=row["format_version"],
        version_id=row["version_id"],
    )


async def stage_move(
    conn: asyncpg.Connection, new_pack: Pack, sources: Sequence[str], chunks: Sequence[ChunkLocation]
) -> None:
    """Record ``new_pack`` (stored, no chunk rows yet) and stage a move into it: the packs it replaces
    (``repack_sources``) and each chunk's place in it (``repack_chunks``). The definer function that
    follows (``repack_pack`` or ``move_chunks``) checks the staging and moves the rows."""
    await conn.execute(
        "INSERT INTO packs (pack_id, account_id, object_key, size, created_at, retain_until, format_version,"
        " version_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (pack_id) DO NOTHING",
        new_pack.pack_id,
        new_pack.account_id,
        new_pack.object_key,
        new_pack.size,
        new_pack.created_at,
        new_pack.retain_until,
        new_pack.format_version,
        new_pack.version_id,
    )
    await conn.execute(
        "INSERT INTO repack_sources (new_pack_id, old_pack_id) SELECT $1, u FROM unnest($2::text[]) AS u"
        " ON CONFLICT DO NOTHING",
        new_pack.pack_id,
        list(sources),
    )
    await conn.execute(
        'INSERT INTO repack_chunks (new_pack_id, chunk_id, "offset", length, raw_length, compression)'
        " SELECT $1, u.chunk_id, u.off, u.len, u.raw, u.comp FROM unnest($2::bytea[], $3::bigint[],"
        " $4::integer[], $5::integer[], $6::smallint[]) AS u(chunk_id, off, len, raw, comp)"
        " ON CONFLICT DO NOTHING",
        new_pack.pack_id,
        [c.chunk_id for c in chunks],
        [c.offset for c in chunks],
        [c.length for c in chunks],
        [c.raw_length for c in chunks],
        [c.compression for c in chunks],
    )


class PgRepackTx:
    """The PostgreSQL side (``self._conn`` is the transaction's connection)."""

    _conn: asyncpg.Connection

    async def repack_candidates(self, created_before: dt.datetime, limit: int) -> list[RepackCandidate]:
        from strongroom_gateway.repository import _PACK_SELECT, _pack

        rows = await self._conn.fetch(
            "WITH expired AS ("
            " SELECT pp.pack_id, count(*)::integer AS n FROM point_packs pp"
            " JOIN point_expirations e ON e.point_id = pp.point_id GROUP BY pp.pack_id)"
            " SELECT p.*, x.n AS expired_references FROM (" + _PACK_SELECT + ") p"
            " JOIN expired x ON x.pack_id = p.pack_id"
            " WHERE p.created_at < $1"
            "  AND x.n > coalesce((SELECT max(l.expired_references) FROM pack_liveness l"
            "   WHERE l.pack_id = p.pack_id), 0)"
            "  AND NOT EXISTS (SELECT 1 FROM pack_condemnations c WHERE c.pack_id = p.pack_id)"
            "  AND NOT EXISTS (SELECT 1 FROM pack_repacks r WHERE r.old_pack_id = p.pack_id)"
            "  AND NOT EXISTS (SELECT 1 FROM pack_moves m WHERE m.old_pack_id = p.pack_id)"
            "  AND NOT EXISTS (SELECT 1 FROM points pt WHERE pt.account_id = p.account_id"
            "   AND NOT EXISTS (SELECT 1 FROM point_references r WHERE r.point_id = pt.point_id)"
            "   AND NOT EXISTS (SELECT 1 FROM point_expirations e WHERE e.point_id = pt.point_id))"
            " ORDER BY p.created_at, p.pack_id LIMIT $2",
            created_before,
            limit,
        )
        return [RepackCandidate(_pack(r), r["expired_references"]) for r in rows]

    async def chunks_in_packs(self, pack_ids: Sequence[str]) -> list[ChunkLocation]:
        rows = await self._conn.fetch(
            'SELECT c.chunk_id, c.pack_id, p.object_key, c."offset", c.length, c.raw_length, c.compression,'
            " p.format_version, p.version_id FROM chunks c JOIN packs p ON p.pack_id = c.pack_id"
            ' WHERE c.pack_id = ANY($1::text[]) ORDER BY c.pack_id, c."offset"',
            list(pack_ids),
        )
        return [chunk_location(r) for r in rows]

    async def live_references(self, pack_ids: Sequence[str]) -> list[tuple[str, Point]]:
        from strongroom_gateway.repository import _point

        rows = await self._conn.fetch(
            "SELECT pp.pack_id AS referenced_pack, pt.* FROM point_packs pp"
            " JOIN points pt ON pt.point_id = pp.point_id"
            " WHERE pp.pack_id = ANY($1::text[])"
            " AND NOT EXISTS (SELECT 1 FROM point_expirations e WHERE e.point_id = pp.point_id)"
            " ORDER BY pt.created_at, pt.point_id",
            list(pack_ids),
        )
        return [(r["referenced_pack"], _point(r)) for r in rows]

    async def record_liveness(self, pack_id: str, expired_references: int, live_bytes: int) -> None:
        await self._conn.execute(
            "INSERT INTO pack_liveness (pack_id, expired_references, live_bytes, measured_at)"
            " VALUES ($1, $2, $3, trusted.now()) ON CONFLICT DO NOTHING",
            pack_id,
            expired_references,
            live_bytes,
        )

    async def repack(
        self, new_pack: Pack, sources: Sequence[str], scanned: Sequence[str], chunks: Sequence[ChunkLocation]
    ) -> bool:
        await stage_move(self._conn, new_pack, sources, chunks)
        await self._conn.execute(
            "INSERT INTO repack_points (new_pack_id, point_id) SELECT $1, u FROM unnest($2::text[]) AS u"
            " ON CONFLICT DO NOTHING",
            new_pack.pack_id,
            list(scanned),
        )
        return bool(await self._conn.fetchval("SELECT repack_pack($1)", new_pack.pack_id))


def staging_refused(s: _MemoryState, new_pack: Pack, sources: set[str], chunks: Sequence[ChunkLocation]) -> bool:
    """What both definer functions refuse (the fakes' side): nothing staged, a new pack that holds
    rows, is condemned, repacked or its own source, a source of another account or repacked,
    condemned or reclaimed, a staged chunk not in a source now (no running-backup rule since
    migration 18, ADR 0057)."""
    gc, account = s.gc, new_pack.account_id
    return (
        not sources
        or not chunks
        or any(c.pack_id == new_pack.pack_id for c in s.chunks.values())
        or new_pack.pack_id in gc.condemned
        or new_pack.pack_id in gc.repacked
        or new_pack.pack_id in sources
        or any(
            p not in s.packs
            or s.packs[p].account_id != account
            or p in gc.repacked
            or p in gc.condemned
            or p in gc.reclaimed
            for p in sources
        )
        or any((loc := s.chunks.get((account, c.chunk_id))) is None or loc.pack_id not in sources for c in chunks)
    )


def move_rows(s: _MemoryState, new_pack: Pack, chunks: Sequence[ChunkLocation]) -> None:
    """The staged rows now locate their chunks in ``new_pack`` (the fakes' side)."""
    for c in chunks:
        s.chunks[(new_pack.account_id, c.chunk_id)] = dataclasses.replace(
            c,
            pack_id=new_pack.pack_id,
            object_key=new_pack.object_key,
            pack_format=new_pack.format_version,
            version_id=new_pack.version_id,
        )


class MemoryRepackTx:
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

    def _expired_references(self, pack_id: str) -> int:
        return sum(1 for pid, packs in self._s.gc.point_packs.items() if pack_id in packs and not self._live(pid))

    async def repack_candidates(self, created_before: dt.datetime, limit: int) -> list[RepackCandidate]:
        gc = self._s.gc
        out: list[RepackCandidate] = []
        for pack in sorted(self._s.packs.values(), key=lambda p: (p.created_at, p.pack_id)):
            if len(out) >= limit:
                break
            expired = self._expired_references(pack.pack_id)
            measured = max((n for (pid, n) in gc.liveness if pid == pack.pack_id), default=0)
            if (
                pack.created_at < created_before
                and expired > measured
                and pack.pack_id not in gc.condemned
                and pack.pack_id not in gc.repacked
                and pack.pack_id not in gc.moved
                and self._account_referenced(pack.account_id)
            ):
                out.append(RepackCandidate(pack, expired))
        return out

    async def chunks_in_packs(self, pack_ids: Sequence[str]) -> list[ChunkLocation]:
        wanted = set(pack_ids)
        return sorted((c for c in self._s.chunks.values() if c.pack_id in wanted), key=lambda c: (c.pack_id, c.offset))

    async def live_references(self, pack_ids: Sequence[str]) -> list[tuple[str, Point]]:
        wanted = set(pack_ids)
        out = [
            (pack_id, self._s.points[pid])
            for pid, packs in self._s.gc.point_packs.items()
            if self._live(pid)
            for pack_id in sorted(packs & wanted)
        ]
        return sorted(out, key=lambda r: (r[1].created_at, r[1].point_id))

    async def record_liveness(self, pack_id: str, expired_references: int, live_bytes: int) -> None:
        self._s.gc.liveness.setdefault((pack_id, expired_references), live_bytes)

    async def repack(
        self, new_pack: Pack, sources: Sequence[str], scanned: Sequence[str], chunks: Sequence[ChunkLocation]
    ) -> bool:
        s, gc = self._s, self._s.gc
        s.packs.setdefault(new_pack.pack_id, new_pack)
        account = new_pack.account_id
        source_set = set(sources)
        referencing = {pid for pid, packs in gc.point_packs.items() if packs & source_set and self._live(pid)}
        refused = (
            staging_refused(s, new_pack, source_set, chunks)
            or not referencing <= set(scanned)
            or not self._account_referenced(account)
        )
        if refused:
            return False
        move_rows(s, new_pack, chunks)
        # The dead rows stay in the sources until reclaim_pack drops them (ADR 0057).
        for pid, packs in gc.point_packs.items():
            if packs & source_set:
                if self._live(pid):
                    packs.add(new_pack.pack_id)
                packs -= source_set
        for p in source_set:
            gc.repacked[p] = new_pack.pack_id
        record_epoch(gc, account, new_pack.pack_id, sorted(source_set))
        return True
