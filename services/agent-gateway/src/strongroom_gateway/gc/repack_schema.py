"""Schema of repacking (ADR 0042): gateway migration 13, its privileges and its function.

The gateway's role writes a new pack as usual (``packs``), then *stages* the move (which packs it
replaces, the points whose manifests were scanned, where each live chunk now lies) in append-only
tables, and calls ``gateway.repack_pack(new_pack)``: a ``SECURITY DEFINER`` function owned by the
migration owner, the only path by which a chunk row changes pack. Under the account's collection
lock (ADR 0041) it checks the staging against the index and moves the rows, drops the source packs'
dead chunk rows, moves the sources' point references to the new pack and records the sources as
repacked; the sources are then condemned and reclaimed by the existing sweep once their lock passes.

``reclaim_pack`` is replaced by the same function plus one rule: a repacked pack is not reclaimed
while a restore of its account that started before its condemnation is running (such a restore may
have located chunks in it before they moved, and reads it by its pinned version).
"""

from __future__ import annotations

from strongroom_gateway.gc.move_sql import move_function_sql, reclaim_function_sql

REPACK_DDL = """
-- Staging of one repack, keyed by the new pack: its source packs, the live points whose manifests
-- were scanned, and the new location of every live chunk of the sources. Append-only history.
CREATE TABLE repack_sources (
    new_pack_id text NOT NULL REFERENCES packs (pack_id),
    old_pack_id text NOT NULL REFERENCES packs (pack_id),
    PRIMARY KEY (new_pack_id, old_pack_id)
);
CREATE TABLE repack_points (
    new_pack_id text NOT NULL REFERENCES packs (pack_id),
    point_id text NOT NULL REFERENCES points (point_id),
    PRIMARY KEY (new_pack_id, point_id)
);
CREATE TABLE repack_chunks (
    new_pack_id text NOT NULL REFERENCES packs (pack_id),
    chunk_id bytea NOT NULL CHECK (length(chunk_id) = 32),
    "offset" bigint NOT NULL CHECK ("offset" >= 0),
    length integer NOT NULL CHECK (length > 0),
    raw_length integer NOT NULL CHECK (raw_length >= 0),
    compression smallint NOT NULL,
    PRIMARY KEY (new_pack_id, chunk_id)
);

-- Written by repack_pack only: the source pack's live chunks now lie in new_pack_id.
CREATE TABLE pack_repacks (
    old_pack_id text PRIMARY KEY REFERENCES packs (pack_id),
    new_pack_id text NOT NULL REFERENCES packs (pack_id),
    account_id text NOT NULL,
    repacked_at timestamptz NOT NULL
);

-- How much of a pack was live when it was last measured, and how many of its referencing points
-- had expired then: a pack is measured again only once more of them expired.
CREATE TABLE pack_liveness (
    pack_id text NOT NULL REFERENCES packs (pack_id),
    expired_references integer NOT NULL CHECK (expired_references >= 0),
    live_bytes bigint NOT NULL CHECK (live_bytes >= 0),
    measured_at timestamptz NOT NULL,
    PRIMARY KEY (pack_id, expired_references)
);
CREATE INDEX point_packs_by_point ON point_packs (point_id);

-- The one path by which a chunk row moves to another pack (see the module's docstring). Refuses
-- (returns false, changing nothing) unless: the new pack has no chunk rows and is neither
-- condemned nor a source itself; every source is a pack of the same account, not repacked,
-- condemned or reclaimed; every staged chunk lies in a source now; every live point referencing
-- a source was scanned; every live point of the account has its references; no backup of the
-- account is running (a running backup may deduplicate against a chunk this drops: its commit
-- would fail, see hold_packs).
"""
REPACK_DDL += move_function_sql("repack", concurrent=False)
REPACK_DDL += """

-- ADR 0041's function and one more rule: a repacked pack waits for the restores of its account that
-- started before its condemnation (they may have located a chunk in it before it moved).
"""
REPACK_DDL += reclaim_function_sql(restores_wait_for=("pack_repacks",))

REPACK_PRIVILEGES: dict[str, str] = {
    "repack_sources": "SELECT, INSERT",
    "repack_points": "SELECT, INSERT",
    "repack_chunks": "SELECT, INSERT",
    "pack_repacks": "SELECT",
    "pack_liveness": "SELECT, INSERT",
}

REPACK_FUNCTIONS: tuple[str, ...] = ("repack_pack(text)",)
