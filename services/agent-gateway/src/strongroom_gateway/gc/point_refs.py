"""How many chunk references of a point each of its packs holds, and the move epoch they are exact
at (gateway migration 20, ADR 0034 update of session 5); part of the gateway's unit of work.

A point's references per pack are counted over its entries' chunk ids (a chunk listed twice counts
twice) as located when it was recorded, at the account's move epoch read then (ADR 0057). A chunk
has one row (``chunks``' key), which only a move (a later epoch) or a reclaim changes, so as long as
no move of a later epoch took chunks out of those packs and none was reclaimed, the counts still
hold. A commit synthesized from the point then counts only its dropped and sent entries' chunks and
takes the rest from here (``points.inherit``).

Like ``gc.store``: the methods are on ``ports.GatewayTx``; the adapters are mixins of
``PgGatewayTx`` and ``InMemoryGatewayTx``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import asyncpg

if TYPE_CHECKING:  # ports imports this module
    from strongroom_gateway.testing import _State as _MemoryState

POINT_REFS_DDL = """
-- Chunk references per pack of a point, exact at the account's move epoch `epoch` (ADR 0034,
-- session 5). Written with the point; points recorded before this migration have none (a commit
-- based on them locates every chunk, as before).
CREATE TABLE point_pack_refs (
    point_id text PRIMARY KEY REFERENCES points (point_id),
    epoch bigint NOT NULL,
    pack_ids text[] NOT NULL,
    refs bigint[] NOT NULL CHECK (cardinality(refs) = cardinality(pack_ids))
);
"""

POINT_REFS_PRIVILEGES: dict[str, str] = {"point_pack_refs": "SELECT, INSERT"}

# Bound on distinct ids per query (as the repository's other lookups).
_BATCH = 10_000


class PointRefsTx(Protocol):
    async def record_point_refs(self, point_id: str, epoch: int, refs: Mapping[str, int]) -> None:
        """The point's chunk references per pack, exact as of the account's move ``epoch``."""
        ...

    async def point_refs(self, point_id: str) -> tuple[int, dict[str, int]] | None:
        """The epoch and the references per pack recorded with the point; None for a point recorded
        without them."""
        ...

    async def chunk_pack_refs(self, account_id: str, counts: Mapping[bytes, int]) -> tuple[dict[str, int], list[bytes]]:
        """For chunk id -> references: the references per pack holding them, and the ids not stored."""
        ...


class PgPointRefsTx:
    """The PostgreSQL side (``self._conn`` is the transaction's connection)."""

    _conn: asyncpg.Connection

    async def record_point_refs(self, point_id: str, epoch: int, refs: Mapping[str, int]) -> None:
        packs = sorted(refs)
        await self._conn.execute(
            "INSERT INTO point_pack_refs (point_id, epoch, pack_ids, refs) VALUES ($1, $2, $3, $4)",
            point_id,
            epoch,
            packs,
            [refs[p] for p in packs],
        )

    async def point_refs(self, point_id: str) -> tuple[int, dict[str, int]] | None:
        row = await self._conn.fetchrow(
            "SELECT epoch, pack_ids, refs FROM point_pack_refs WHERE point_id = $1", point_id
        )
        if row is None:
            return None
        return int(row["epoch"]), dict(zip(row["pack_ids"], (int(n) for n in row["refs"]), strict=True))

    async def chunk_pack_refs(self, account_id: str, counts: Mapping[bytes, int]) -> tuple[dict[str, int], list[bytes]]:
        refs: dict[str, int] = {}
        missing: list[bytes] = []
        ids = list(counts)
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            # Aggregated in the server: one row per pack (and one for the ids not stored).
            rows = await self._conn.fetch(
                "SELECT c.pack_id, sum(t.n)::bigint AS refs,"
                " array_agg(t.id) FILTER (WHERE c.pack_id IS NULL) AS missing"
                " FROM unnest($2::bytea[], $3::bigint[]) AS t(id, n)"
                " LEFT JOIN chunks c ON c.account_id = $1 AND c.chunk_id = t.id GROUP BY c.pack_id",
                account_id,
                batch,
                [counts[i] for i in batch],
            )
            for row in rows:
                if row["pack_id"] is None:
                    missing.extend(bytes(m) for m in row["missing"])
                else:
                    refs[row["pack_id"]] = refs.get(row["pack_id"], 0) + int(row["refs"])
        return refs, missing


class MemoryPointRefsTx:
    """The in-memory side (``self._s`` is the fake store's state)."""

    _s: _MemoryState

    async def record_point_refs(self, point_id: str, epoch: int, refs: Mapping[str, int]) -> None:
        if point_id not in self._s.points:
            raise ValueError(f"point {point_id} does not exist")  # foreign key
        if point_id in self._s.point_refs:
            raise ValueError(f"point {point_id} has its references")  # primary key
        self._s.point_refs[point_id] = (epoch, dict(refs))

    async def point_refs(self, point_id: str) -> tuple[int, dict[str, int]] | None:
        recorded = self._s.point_refs.get(point_id)
        return None if recorded is None else (recorded[0], dict(recorded[1]))

    async def chunk_pack_refs(self, account_id: str, counts: Mapping[bytes, int]) -> tuple[dict[str, int], list[bytes]]:
        refs: dict[str, int] = {}
        missing: list[bytes] = []
        for chunk_id, n in counts.items():
            location = self._s.chunks.get((account_id, bytes(chunk_id)))
            if location is None:
                missing.append(bytes(chunk_id))
            else:
                refs[location.pack_id] = refs.get(location.pack_id, 0) + n
        return refs, missing
