"""Persistence of garbage collection (ADR 0041), part of the gateway's unit of work.

The methods are on ``ports.GatewayTx`` (the version-expired consumer and the commit use them in
their own transactions); the two adapters are mixins of ``PgGatewayTx`` and ``InMemoryGatewayTx``,
as ``agent_cert_store`` does. Trusted time (ADR 0031) decides every lock and age here: PostgreSQL's
``trusted.now()``; in the fake, the clock the fake store was given.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import asyncpg

if TYPE_CHECKING:  # ports imports this module
    from strongroom_gateway.ports import Pack, Point
    from strongroom_gateway.testing import _State as _MemoryState


class GcTx(Protocol):
    async def expire_point(self, point_id: str, version_id: str, expired_at: dt.datetime) -> bool:
        """Record that the point's version expired (once; True when recorded now)."""
        ...

    async def hold_packs(self, account_id: str, pack_ids: Sequence[str]) -> list[str]:
        """Hold the account's collection lock (shared) until the transaction ends; return those of
        ``pack_ids`` already reclaimed, or repacked before migration 18 (a point must not reference
        them: such a repack dropped its sources' dead chunks, ADR 0042)."""
        ...

    async def gc_epoch(self, account_id: str) -> int:
        """Hold the account's collection lock (shared) until the transaction ends and return the
        epoch of its latest move or repack (0: none). A commit reads it before locating its chunks
        (ADR 0057)."""
        ...

    async def pack_successors(self, account_id: str, pack_ids: Sequence[str], after_epoch: int) -> set[str]:
        """The packs that chunks of ``pack_ids`` moved to (repacks and moves) in the account's moves
        of a later epoch than ``after_epoch``, and where those moved on since, transitively."""
        ...

    async def record_point_packs(self, point_id: str, pack_ids: Sequence[str]) -> None:
        """Record the packs the point references; its references are complete from now on."""
        ...

    async def unreferenced_points(self, limit: int) -> list[Point]:
        """Live points whose references are not recorded (committed before migration 11)."""
        ...

    async def condemn_unreferenced_packs(self, created_before: dt.datetime, limit: int) -> int:
        """Phase 1: condemn up to ``limit`` packs created before ``created_before`` that no live point
        references, of accounts whose live points all have their references recorded, and not
        created after a running backup of their account started. Returns how many."""
        ...

    async def reclaim_candidates(self, min_condemned_age: dt.timedelta, limit: int) -> list[Pack]:
        """Condemned, unreclaimed packs condemned ``min_condemned_age`` ago whose lock has passed."""
        ...

    async def reclaim_pack(self, pack_id: str, min_condemned_age: dt.timedelta) -> bool:
        """Phase 2 (``gateway.reclaim_pack``): drop the pack's chunks from the index if still safe."""
        ...

    async def reclaimed_objects(self, limit: int) -> list[Pack]:
        """Reclaimed packs whose object is not deleted yet."""
        ...

    async def pack_object_deleted(self, pack_id: str, at: dt.datetime) -> None: ...

    async def reclaimable_points(self, limit: int) -> list[Point]:
        """Expired points whose manifest lock has passed (trusted time) and that are not reclaimed."""
        ...

    async def point_reclaimed(self, point_id: str, at: dt.datetime) -> None: ...


def _lock_key(account_id: str) -> str:
    return f"gateway.gc:{account_id}"


class PgGcTx:
    """The PostgreSQL side (``self._conn`` is the transaction's connection)."""

    _conn: asyncpg.Connection

    async def expire_point(self, point_id: str, version_id: str, expired_at: dt.datetime) -> bool:
        result = await self._conn.execute(
            "INSERT INTO point_expirations (point_id, version_id, expired_at) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            point_id,
            version_id,
            expired_at,
        )
        return bool(result == "INSERT 0 1")

    async def hold_packs(self, account_id: str, pack_ids: Sequence[str]) -> list[str]:
        await self._conn.execute("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))", _lock_key(account_id))
        rows = await self._conn.fetch(
            "SELECT pack_id FROM pack_reclaims WHERE pack_id = ANY($1::text[])"
            " UNION SELECT old_pack_id FROM pack_repacks WHERE old_pack_id = ANY($1::text[]) AND epoch IS NULL"
            " ORDER BY 1",
            list(pack_ids),
        )
        return [r["pack_id"] for r in rows]

    async def gc_epoch(self, account_id: str) -> int:
        await self._conn.execute("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))", _lock_key(account_id))
        value = await self._conn.fetchval(
            "SELECT coalesce(max(e.epoch), 0) FROM (SELECT epoch FROM pack_repacks WHERE account_id = $1"
            " UNION ALL SELECT epoch FROM pack_moves WHERE account_id = $1) e",
            account_id,
        )
        return int(value)

    async def pack_successors(self, account_id: str, pack_ids: Sequence[str], after_epoch: int) -> set[str]:
        rows = await self._conn.fetch(
            "WITH RECURSIVE m AS ("
            " SELECT old_pack_id, new_pack_id FROM pack_repacks WHERE account_id = $1 AND epoch > $3"
            " UNION ALL SELECT old_pack_id, new_pack_id FROM pack_moves WHERE account_id = $1 AND epoch > $3),"
            " s (pack_id) AS (SELECT new_pack_id FROM m WHERE old_pack_id = ANY($2::text[])"
            "  UNION SELECT m.new_pack_id FROM m JOIN s ON m.old_pack_id = s.pack_id)"
            " SELECT pack_id FROM s",
            account_id,
            list(pack_ids),
            after_epoch,
        )
        return {r["pack_id"] for r in rows}

    async def record_point_packs(self, point_id: str, pack_ids: Sequence[str]) -> None:
        await self._conn.execute(
            "INSERT INTO point_packs (pack_id, point_id) SELECT u, $1 FROM unnest($2::text[]) AS u"
            " ON CONFLICT DO NOTHING",
            point_id,
            list(pack_ids),
        )
        await self._conn.execute("INSERT INTO point_references (point_id) VALUES ($1) ON CONFLICT DO NOTHING", point_id)

    async def unreferenced_points(self, limit: int) -> list[Point]:
        from strongroom_gateway.repository import _point

        rows = await self._conn.fetch(
            "SELECT pt.* FROM points pt WHERE NOT EXISTS (SELECT 1 FROM point_references r"
            " WHERE r.point_id = pt.point_id) AND NOT EXISTS (SELECT 1 FROM point_expirations e"
            " WHERE e.point_id = pt.point_id) ORDER BY pt.created_at LIMIT $1",
            limit,
        )
        return [_point(r) for r in rows]

    async def condemn_unreferenced_packs(self, created_before: dt.datetime, limit: int) -> int:
        value = await self._conn.fetchval(
            "WITH condemned AS ("
            " INSERT INTO pack_condemnations (pack_id, account_id, condemned_at)"
            " SELECT p.pack_id, p.account_id, trusted.now() FROM packs p"
            " WHERE p.created_at < $1"
            "  AND NOT EXISTS (SELECT 1 FROM pack_condemnations c WHERE c.pack_id = p.pack_id)"
            "  AND NOT EXISTS (SELECT 1 FROM point_packs pp WHERE pp.pack_id = p.pack_id"
            "   AND NOT EXISTS (SELECT 1 FROM point_expirations e WHERE e.point_id = pp.point_id))"
            "  AND NOT EXISTS (SELECT 1 FROM points pt WHERE pt.account_id = p.account_id"
            "   AND NOT EXISTS (SELECT 1 FROM point_references r WHERE r.point_id = pt.point_id)"
            "   AND NOT EXISTS (SELECT 1 FROM point_expirations e WHERE e.point_id = pt.point_id))"
            "  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.account_id = p.account_id AND j.kind = 'backup'"
            "   AND j.state <> 'finished' AND j.created_at <= p.created_at)"
            " ORDER BY p.created_at LIMIT $2"
            " ON CONFLICT DO NOTHING RETURNING 1)"
            " SELECT count(*) FROM condemned",
            created_before,
            limit,
        )
        return int(value)

    async def reclaim_candidates(self, min_condemned_age: dt.timedelta, limit: int) -> list[Pack]:
        from strongroom_gateway.repository import _PACK_SELECT, _pack

        rows = await self._conn.fetch(
            "SELECT * FROM (" + _PACK_SELECT + " JOIN pack_condemnations c ON c.pack_id = p.pack_id"
            " WHERE c.condemned_at <= trusted.now() - $1::interval"
            " AND NOT EXISTS (SELECT 1 FROM pack_reclaims x WHERE x.pack_id = p.pack_id)) p"
            " WHERE retain_until < trusted.now() ORDER BY created_at LIMIT $2",
            min_condemned_age,
            limit,
        )
        return [_pack(r) for r in rows]

    async def reclaim_pack(self, pack_id: str, min_condemned_age: dt.timedelta) -> bool:
        return bool(await self._conn.fetchval("SELECT reclaim_pack($1, $2::interval)", pack_id, min_condemned_age))

    async def reclaimed_objects(self, limit: int) -> list[Pack]:
        from strongroom_gateway.repository import _PACK_SELECT, _pack

        rows = await self._conn.fetch(
            _PACK_SELECT + " JOIN pack_reclaims x ON x.pack_id = p.pack_id WHERE x.object_deleted_at IS NULL"
            " ORDER BY x.reclaimed_at LIMIT $1",
            limit,
        )
        return [_pack(r) for r in rows]

    async def pack_object_deleted(self, pack_id: str, at: dt.datetime) -> None:
        await self._conn.execute(
            "UPDATE pack_reclaims SET object_deleted_at = $2 WHERE pack_id = $1 AND object_deleted_at IS NULL",
            pack_id,
            at,
        )

    async def reclaimable_points(self, limit: int) -> list[Point]:
        from strongroom_gateway.repository import _point

        rows = await self._conn.fetch(
            "SELECT pt.* FROM points pt JOIN point_expirations e ON e.point_id = pt.point_id"
            " WHERE pt.retain_until < trusted.now()"
            " AND NOT EXISTS (SELECT 1 FROM point_reclaims x WHERE x.point_id = pt.point_id)"
            " ORDER BY pt.created_at LIMIT $1",
            limit,
        )
        return [_point(r) for r in rows]

    async def point_reclaimed(self, point_id: str, at: dt.datetime) -> None:
        await self._conn.execute(
            "INSERT INTO point_reclaims (point_id, reclaimed_at) VALUES ($1, $2) ON CONFLICT DO NOTHING", point_id, at
        )


@dataclasses.dataclass
class MemoryGcState:
    """What the fake keeps for collection (a field of the fake store's state)."""

    expirations: dict[str, dt.datetime] = dataclasses.field(default_factory=dict)
    point_packs: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    condemned: dict[str, dt.datetime] = dataclasses.field(default_factory=dict)
    reclaimed: dict[str, dt.datetime | None] = dataclasses.field(default_factory=dict)
    points_reclaimed: set[str] = dataclasses.field(default_factory=set)
    # Repacking (ADR 0042): source pack -> the pack its live chunks moved to; (pack, expired
    # references) -> live bytes measured.
    repacked: dict[str, str] = dataclasses.field(default_factory=dict)
    liveness: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    # Generational moves (ADR 0042, 2026-12-06): source pack -> the packs some of its chunks moved
    # to; (pack, newest point's time) -> hot bytes measured.
    moved: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    heat: dict[tuple[str, dt.datetime], int] = dataclasses.field(default_factory=dict)
    heat_measured: dict[tuple[str, dt.datetime], dt.datetime] = dataclasses.field(default_factory=dict)
    # Moves concurrent with backups (ADR 0057): (source, new pack, account) -> the move's epoch.
    epochs: dict[tuple[str, str, str], int] = dataclasses.field(default_factory=dict)

    def copy(self) -> MemoryGcState:
        return MemoryGcState(
            dict(self.expirations),
            {k: set(v) for k, v in self.point_packs.items()},
            dict(self.condemned),
            dict(self.reclaimed),
            set(self.points_reclaimed),
            dict(self.repacked),
            dict(self.liveness),
            {k: set(v) for k, v in self.moved.items()},
            dict(self.heat),
            dict(self.heat_measured),
            dict(self.epochs),
        )


def record_epoch(gc: MemoryGcState, account_id: str, new_pack_id: str, sources: Sequence[str]) -> None:
    """The fakes' side of the move functions' epoch (ADR 0057): one more than the account's latest."""
    epoch = max((e for (_, _, a), e in gc.epochs.items() if a == account_id), default=0) + 1
    for old in sources:
        gc.epochs[(old, new_pack_id, account_id)] = epoch


class MemoryGcTx:
    """The in-memory side (``self._s`` is the fake store's state, ``self._trusted_now`` its clock)."""

    _s: _MemoryState
    _trusted_now: Callable[[], dt.datetime]

    def _live(self, point_id: str) -> bool:
        return point_id not in self._s.gc.expirations

    def _account_referenced(self, account_id: str) -> bool:
        gc = self._s.gc
        return all(
            p.point_id in gc.point_packs or not self._live(p.point_id)
            for p in self._s.points.values()
            if p.account_id == account_id
        )

    def _referenced(self, pack_id: str) -> bool:
        return any(pack_id in packs and self._live(pid) for pid, packs in self._s.gc.point_packs.items())

    def _lock(self, pack: Pack) -> dt.datetime:
        return pack.retain_until  # the fake keeps extensions in the pack itself

    async def expire_point(self, point_id: str, version_id: str, expired_at: dt.datetime) -> bool:
        if point_id not in self._s.points:
            raise ValueError(f"point {point_id} does not exist")  # foreign key
        if point_id in self._s.gc.expirations:
            return False
        self._s.gc.expirations[point_id] = expired_at
        return True

    async def hold_packs(self, account_id: str, pack_ids: Sequence[str]) -> list[str]:
        gc = self._s.gc
        return sorted(p for p in set(pack_ids) if p in gc.reclaimed)

    async def gc_epoch(self, account_id: str) -> int:
        return max((e for (_, _, a), e in self._s.gc.epochs.items() if a == account_id), default=0)

    async def pack_successors(self, account_id: str, pack_ids: Sequence[str], after_epoch: int) -> set[str]:
        moves = [(old, new) for (old, new, a), e in self._s.gc.epochs.items() if a == account_id and e > after_epoch]
        found: set[str] = set()
        frontier = set(pack_ids)
        while frontier:
            step = {new for old, new in moves if old in frontier} - found
            found |= step
            frontier = step
        return found

    async def record_point_packs(self, point_id: str, pack_ids: Sequence[str]) -> None:
        self._s.gc.point_packs.setdefault(point_id, set()).update(pack_ids)

    async def unreferenced_points(self, limit: int) -> list[Point]:
        points = [
            p for p in self._s.points.values() if p.point_id not in self._s.gc.point_packs and self._live(p.point_id)
        ]
        return sorted(points, key=lambda p: p.created_at)[:limit]

    async def condemn_unreferenced_packs(self, created_before: dt.datetime, limit: int) -> int:
        gc = self._s.gc
        count = 0
        for pack in sorted(self._s.packs.values(), key=lambda p: p.created_at):
            if count >= limit:
                break
            running = any(
                j.account_id == pack.account_id
                and j.kind == "backup"
                and j.state != "finished"
                and j.created_at <= pack.created_at
                for j in self._s.jobs.values()
            )
            if (
                pack.created_at < created_before
                and pack.pack_id not in gc.condemned
                and not self._referenced(pack.pack_id)
                and self._account_referenced(pack.account_id)
                and not running
            ):
                gc.condemned[pack.pack_id] = self._trusted_now()
                count += 1
        return count

    async def reclaim_candidates(self, min_condemned_age: dt.timedelta, limit: int) -> list[Pack]:
        now = self._trusted_now()
        gc = self._s.gc
        packs = [
            self._s.packs[pid]
            for pid, at in gc.condemned.items()
            if at <= now - min_condemned_age and pid not in gc.reclaimed and self._lock(self._s.packs[pid]) < now
        ]
        return sorted(packs, key=lambda p: p.created_at)[:limit]

    async def reclaim_pack(self, pack_id: str, min_condemned_age: dt.timedelta) -> bool:
        gc = self._s.gc
        now = self._trusted_now()
        pack = self._s.packs.get(pack_id)
        if pack is None or pack_id not in gc.condemned or pack_id in gc.reclaimed:
            return False
        running = any(
            j.account_id == pack.account_id
            and (j.kind == "backup" or (j.kind == "restore" and (pack_id in gc.repacked or pack_id in gc.moved)))
            and j.state != "finished"
            and j.created_at <= gc.condemned[pack_id]
            for j in self._s.jobs.values()
        )
        if (
            self._lock(pack) >= now
            or gc.condemned[pack_id] > now - min_condemned_age
            or self._referenced(pack_id)
            or not self._account_referenced(pack.account_id)
            or running
        ):
            return False
        for key in [k for k, loc in self._s.chunks.items() if loc.pack_id == pack_id]:
            del self._s.chunks[key]
        gc.reclaimed[pack_id] = None
        return True

    async def reclaimed_objects(self, limit: int) -> list[Pack]:
        return [self._s.packs[pid] for pid, at in self._s.gc.reclaimed.items() if at is None][:limit]

    async def pack_object_deleted(self, pack_id: str, at: dt.datetime) -> None:
        if self._s.gc.reclaimed.get(pack_id, at) is None:
            self._s.gc.reclaimed[pack_id] = at

    async def reclaimable_points(self, limit: int) -> list[Point]:
        now = self._trusted_now()
        points = [
            p
            for p in self._s.points.values()
            if not self._live(p.point_id) and p.retain_until < now and p.point_id not in self._s.gc.points_reclaimed
        ]
        return sorted(points, key=lambda p: p.created_at)[:limit]

    async def point_reclaimed(self, point_id: str, at: dt.datetime) -> None:
        self._s.gc.points_reclaimed.add(point_id)
