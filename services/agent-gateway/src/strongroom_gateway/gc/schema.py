"""Schema of garbage collection (ADR 0041): gateway migration 11, its privileges and its function.

Everything here is append-only for the gateway's role except one column (when a reclaimed pack's
object was deleted). Chunk rows of a pack are deleted only by ``reclaim_pack``, a ``SECURITY
DEFINER`` function owned by the migration owner that checks, under the account's collection lock,
that no live point references the pack and that its Object Lock has passed by the trusted time.
"""

from __future__ import annotations

from strongroom_gateway.gc.move_sql import reclaim_function_sql

GC_DDL = """
-- Points whose version the catalog expired (from version-expired); a point without a row is live.
CREATE TABLE point_expirations (
    point_id text PRIMARY KEY REFERENCES points (point_id),
    version_id text NOT NULL,
    expired_at timestamptz NOT NULL
);

-- The packs holding the chunks a point references, written with the point (or, for points
-- committed before this migration, from their manifest). point_references says a point's rows
-- are complete; a live point without it keeps every pack of its account.
CREATE TABLE point_packs (
    pack_id text NOT NULL REFERENCES packs (pack_id),
    point_id text NOT NULL REFERENCES points (point_id),
    PRIMARY KEY (pack_id, point_id)
);
CREATE TABLE point_references (
    point_id text PRIMARY KEY REFERENCES points (point_id),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX points_by_account ON points (account_id);

-- Phase 1 (mark): a pack no live point referenced when it was seen, at the trusted time.
CREATE TABLE pack_condemnations (
    pack_id text PRIMARY KEY REFERENCES packs (pack_id),
    account_id text NOT NULL,
    condemned_at timestamptz NOT NULL
);

-- Phase 2 (sweep): written by reclaim_pack only, with the pack's chunk rows gone in the same
-- transaction; object_deleted_at once the reclaimer identity deleted the object.
CREATE TABLE pack_reclaims (
    pack_id text PRIMARY KEY REFERENCES packs (pack_id),
    reclaimed_at timestamptz NOT NULL,
    object_deleted_at timestamptz
);
CREATE INDEX pack_reclaims_pending ON pack_reclaims (reclaimed_at) WHERE object_deleted_at IS NULL;

-- An expired point whose manifest and point record were deleted from the bucket.
CREATE TABLE point_reclaims (
    point_id text PRIMARY KEY REFERENCES points (point_id),
    reclaimed_at timestamptz NOT NULL
);

CREATE INDEX chunks_by_pack ON chunks (pack_id);
CREATE INDEX packs_by_age ON packs (created_at);

-- The one path by which chunk rows leave the index. Runs as the schema's owner; only the
-- gateway's role may call it. Under the account's collection lock (every commit holds it shared
-- while it checks and records its packs: a point is recorded either before, and then keeps the
-- pack, or after, and then sees it reclaimed and fails), it reclaims the pack only if it was
-- condemned at least min_condemned_age ago by the trusted time, its Object Lock (the latest of
-- its own date and its extensions) has passed by the trusted time, no live point references it,
-- every live point of the account has its references recorded, and no backup of the account
-- that started before the condemnation is still running. Returns whether it reclaimed.
"""
GC_DDL += reclaim_function_sql()

GC_PRIVILEGES: dict[str, str] = {
    "point_expirations": "SELECT, INSERT",
    "point_packs": "SELECT, INSERT",
    "point_references": "SELECT, INSERT",
    "pack_condemnations": "SELECT, INSERT",
    "pack_reclaims": "SELECT, UPDATE (object_deleted_at)",
    "point_reclaims": "SELECT, INSERT",
}

GC_FUNCTIONS: tuple[str, ...] = ("reclaim_pack(text, interval)",)
