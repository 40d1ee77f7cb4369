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

from strongroom_gateway.gc.repack_schema import REPACK_DDL

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
CREATE FUNCTION move_chunks(target text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trusted_at timestamptz := trusted.now();
    owner_account text;
    target_lock timestamptz;
    staged integer;
    located integer;
BEGIN
    SELECT p.account_id, p.retain_until INTO owner_account, target_lock FROM gateway.packs p WHERE p.pack_id = target;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('gateway.gc:' || owner_account, 0));
    IF NOT EXISTS (SELECT 1 FROM gateway.repack_sources s WHERE s.new_pack_id = target)
       OR EXISTS (SELECT 1 FROM gateway.chunks c WHERE c.pack_id = target)
       OR EXISTS (SELECT 1 FROM gateway.pack_condemnations c WHERE c.pack_id = target)
       OR EXISTS (SELECT 1 FROM gateway.pack_repacks r WHERE r.old_pack_id = target)
       OR EXISTS (SELECT 1 FROM gateway.pack_moves m WHERE m.old_pack_id = target)
       OR EXISTS (
           SELECT 1 FROM gateway.repack_sources s JOIN gateway.packs p ON p.pack_id = s.old_pack_id
           WHERE s.new_pack_id = target
             AND (p.account_id <> owner_account OR s.old_pack_id = target
                  OR EXISTS (SELECT 1 FROM gateway.pack_repacks r WHERE r.old_pack_id = s.old_pack_id)
                  OR EXISTS (SELECT 1 FROM gateway.pack_condemnations c WHERE c.pack_id = s.old_pack_id)
                  OR EXISTS (SELECT 1 FROM gateway.pack_reclaims x WHERE x.pack_id = s.old_pack_id)))
       OR EXISTS (
           SELECT 1 FROM gateway.point_packs pp
           JOIN gateway.repack_sources s ON s.old_pack_id = pp.pack_id AND s.new_pack_id = target
           JOIN gateway.points pt ON pt.point_id = pp.point_id
           WHERE pt.retain_until > target_lock
             AND NOT EXISTS (SELECT 1 FROM gateway.point_expirations e WHERE e.point_id = pp.point_id))
       OR EXISTS (
           SELECT 1 FROM gateway.points pt
           WHERE pt.account_id = owner_account
             AND NOT EXISTS (SELECT 1 FROM gateway.point_references r WHERE r.point_id = pt.point_id)
             AND NOT EXISTS (SELECT 1 FROM gateway.point_expirations e WHERE e.point_id = pt.point_id))
       OR EXISTS (
           SELECT 1 FROM gateway.jobs j
           WHERE j.account_id = owner_account AND j.kind = 'backup' AND j.state <> 'finished')
    THEN
        RETURN false;
    END IF;
    SELECT count(*) INTO staged FROM gateway.repack_chunks rc WHERE rc.new_pack_id = target;
    SELECT count(*) INTO located
        FROM gateway.repack_chunks rc
        JOIN gateway.chunks c ON c.account_id = owner_account AND c.chunk_id = rc.chunk_id
        JOIN gateway.repack_sources s ON s.new_pack_id = target AND s.old_pack_id = c.pack_id
        WHERE rc.new_pack_id = target;
    IF staged = 0 OR located <> staged THEN
        RETURN false;
    END IF;
    UPDATE gateway.chunks c
        SET pack_id = target, "offset" = rc."offset", length = rc.length,
            raw_length = rc.raw_length, compression = rc.compression
        FROM gateway.repack_chunks rc
        WHERE rc.new_pack_id = target AND c.account_id = owner_account AND c.chunk_id = rc.chunk_id;
    -- Every live point that referenced a source may read a moved chunk: it references the new pack
    -- too, and keeps the source (it may read the chunks that stayed).
    INSERT INTO gateway.point_packs (pack_id, point_id)
        SELECT DISTINCT target, pp.point_id
        FROM gateway.point_packs pp JOIN gateway.repack_sources s ON s.old_pack_id = pp.pack_id
        WHERE s.new_pack_id = target
          AND NOT EXISTS (SELECT 1 FROM gateway.point_expirations e WHERE e.point_id = pp.point_id)
        ON CONFLICT DO NOTHING;
    INSERT INTO gateway.pack_moves (old_pack_id, new_pack_id, account_id, moved_at)
        SELECT s.old_pack_id, target, owner_account, trusted_at
        FROM gateway.repack_sources s WHERE s.new_pack_id = target;
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION move_chunks(text) FROM PUBLIC;

"""


# ADR 0042's reclaim_pack (migration 13) with its restore rule widened to moved-from packs.
_REPACKED = "EXISTS (SELECT 1 FROM gateway.pack_repacks r WHERE r.old_pack_id = target)"
_RECLAIM_13 = REPACK_DDL[REPACK_DDL.index("-- ADR 0041's function and one more rule") :]
assert _RECLAIM_13.count(_REPACKED) == 1, "migration 13's reclaim_pack changed: write migration 16's out"
MOVES_DDL += "\n-- ADR 0042's function; a moved-from pack waits for restores like a repacked one.\n" + _RECLAIM_13[
    _RECLAIM_13.index("CREATE OR REPLACE FUNCTION") :
].replace(
    _REPACKED,
    "(" + _REPACKED + "\n            OR EXISTS (SELECT 1 FROM gateway.pack_moves m WHERE m.old_pack_id = target))",
)

MOVES_PRIVILEGES: dict[str, str] = {
    "pack_moves": "SELECT",
    "pack_heat": "SELECT, INSERT",
}

MOVES_FUNCTIONS: tuple[str, ...] = ("move_chunks(text)",)
