"""Schema of generational moves (ADR 0042, update of 2026-12-06): gateway migration 16.

A *move* copies the chunks of a pack that the newest point of each lineage (instance and mount
point) still uses into a new pack and re-points only those rows; the rest stays in the source, which
older points still read and which no new point references any more, so its Object Lock stops being
extended (ADR 0010) and the pack goes with its last older point. The gateway stages a move in the
tables of migration 13 (``repack_sources``, ``repack_chunks``) and calls ``gateway.move_chunks``, a
``SECURITY DEFINER`` function owned by the migration owner, the second path (after ``repack_pack``)
by which a chunk row changes pack.

``reclaim_pack`` is replaced once more: a moved-from pack, like a repacked one, waits for the
restores of its account that started before its condemnation.
"""

from __future__ import annotations

from strongroom_gateway.gc.move_sql import move_function_sql, reclaim_function_sql

MOVES_DDL = """
-- Written by move_chunks only: some chunks of old_pack_id (those the newest points used) now lie in
-- new_pack_id; the others stay where they were.
CREATE TABLE pack_moves (
    old_pack_id text NOT NULL REFERENCES packs (pack_id),
    new_pack_id text NOT NULL REFERENCES packs (pack_id),
    account_id text NOT NULL,
    moved_at timestamptz NOT NULL,
    PRIMARY KEY (old_pack_id, new_pack_id)
);

-- How much of a pack the newest point of each lineage used when it was measured (newest_at: the
-- latest such point then): a pack is measured again only against a newer point.
CREATE TABLE pack_heat (
    pack_id text NOT NULL REFERENCES packs (pack_id),
    newest_at timestamptz NOT NULL,
    hot_bytes bigint NOT NULL CHECK (hot_bytes >= 0),
    measured_at timestamptz NOT NULL,
    PRIMARY KEY (pack_id, newest_at)
);
CREATE INDEX points_by_lineage ON points (account_id, instance_id, mount_point, created_at);

-- Moves the staged chunk rows of target (repack_sources, repack_chunks) into it and keeps every
-- other row of the sources. Refuses (returns false, changing nothing) unless: the new pack has no
-- chunk rows, is neither condemned nor a source itself, and is locked at least as long as every
-- live point referencing a source (those points now reference it too, ADR 0010); every source is
-- a pack of the same account, not repacked, condemned or reclaimed; every staged chunk lies in a
-- source now; every live point of the account has its references; no backup of the account is
-- running (its commit may have located a chunk in a source before the move).
"""
MOVES_DDL += move_function_sql("move", concurrent=False)
# ADR 0042's reclaim_pack; a moved-from pack waits for restores like a repacked one.
MOVES_DDL += reclaim_function_sql(restores_wait_for=("pack_repacks", "pack_moves"))

MOVES_PRIVILEGES: dict[str, str] = {
    "pack_moves": "SELECT",
    "pack_heat": "SELECT, INSERT",
}

MOVES_FUNCTIONS: tuple[str, ...] = ("move_chunks(text)",)
