"""Idempotency-Keys in PostgreSQL (schema ``api``, ADR 0055): one key space for every edge replica.

The same contract as :class:`~strongroom_api.idempotency.MemoryIdempotencyStore`, made atomic by the
table's primary key: of two replicas claiming one key at once exactly one inserts the row, the other
sees it (in progress, or the stored answer). A claim whose edge died before answering is taken over
once ``lease`` has passed (a request cannot run longer than the edge's call timeout); every claim
is forgotten after ``ttl``.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from strongroom_api.idempotency import Claimed, ClaimResult, InProgress, Mismatch, Replay, StoredResponse

EXPIRE_BATCH = 500  # expired rows deleted per claim: expiry keeps up without one large delete

_TAKE = """
INSERT INTO idempotency_keys AS k (scope, key, fingerprint, claimed_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, claimed_at = EXCLUDED.claimed_at,
    status = NULL, body = NULL
WHERE k.claimed_at <= $5 OR (k.status IS NULL AND k.claimed_at <= $6 AND k.fingerprint = EXCLUDED.fingerprint)
RETURNING 1
"""

_EXPIRE = """
DELETE FROM idempotency_keys WHERE (scope, key) IN (
    SELECT scope, key FROM idempotency_keys WHERE claimed_at <= $1 ORDER BY claimed_at LIMIT $2
    FOR UPDATE SKIP LOCKED
)
"""


class PgIdempotencyStore:
    """The :class:`~strongroom_api.idempotency.IdempotencyStore` port over ``api.idempotency_keys``."""

    def __init__(self, pool: asyncpg.Pool, *, ttl: dt.timedelta, lease: dt.timedelta) -> None:
        if lease >= ttl:
            raise ValueError("the lease of a running claim must be shorter than the keys' ttl")
        self._pool = pool
        self._ttl = ttl
        self._lease = lease

    async def claim(self, scope: str, key: str, fingerprint: str, now: dt.datetime) -> ClaimResult:
        async with self._pool.acquire() as conn:
            await conn.execute(_EXPIRE, now - self._ttl, EXPIRE_BATCH)
            # A concurrent release can delete the row between the insert and the read: try again.
            for _ in range(3):
                if await conn.fetchval(_TAKE, scope, key, fingerprint, now, now - self._ttl, now - self._lease):
                    return Claimed()
                row = await conn.fetchrow(
                    "SELECT fingerprint, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key
                )
                if row is None:
                    continue
                if row["fingerprint"] != fingerprint:
                    return Mismatch()
                if row["status"] is None:
                    return InProgress()
                return Replay(StoredResponse(status=int(row["status"]), body=bytes(row["body"])))
        return InProgress()  # the key keeps changing hands: the caller retries later (409)

    async def complete(self, scope: str, key: str, response: StoredResponse) -> None:
        await self._pool.execute(
            "UPDATE idempotency_keys SET status = $3, body = $4 WHERE scope = $1 AND key = $2 AND status IS NULL",
            scope,
            key,
            response.status,
            response.body,
        )

    async def release(self, scope: str, key: str) -> None:
        await self._pool.execute(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND status IS NULL", scope, key
        )
