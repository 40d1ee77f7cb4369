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
CREATE FUNCTION repack_pack(target text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trusted_at timestamptz := trusted.now();
    owner_account text;
    staged integer;
    moved integer;
BEGIN
    SELECT p.account_id INTO owner_account FROM gateway.packs p WHERE p.pack_id = target;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('gateway.gc:' || owner_account, 0));
    IF NOT EXISTS (SELECT 1 FROM gateway.repack_sources s WHERE s.new_pack_id = target)
       OR EXISTS (SELECT 1 FROM gateway.chunks c WHERE c.pack_id = target)
       OR EXISTS (SELECT 1 FROM gateway.pack_condemnations c WHERE c.pack_id = target)
       OR EXISTS (SELECT 1 FROM gateway.pack_repacks r WHERE r.old_pack_id = target)
       OR EXISTS (
           SELECT 1 FROM gateway.repack_sources s JOIN gateway.packs p ON p.pack_id = s.old_pack_id
           WHERE s.new_pack_id = target
             AND (p.account_id <> owner_account OR s.old_pack_id = target
                  OR EXISTS (SELECT 1 FROM gateway.pack_repacks r WHERE r.old_pack_id = s.old_pack_id)
                  OR EXISTS (SELECT 1 FROM gateway.pack_condemnations c WHERE c.pack_id = s.old_pack_id)
                  OR EXISTS (SELECT 1 FROM gateway.pack_reclaims x WHERE x.pack_id = s.old_pack_id)))
       OR EXISTS (
           SELECT 1 FROM gateway.point_packs pp JOIN gateway.repack_sources s ON s.old_pack_id = pp.pack_id
           WHERE s.new_pack_id = target
             AND NOT EXISTS (SELECT 1 FROM gateway.point_expirations e WHERE e.point_id = pp.point_id)
             AND NOT EXISTS (SELECT 1 FROM gateway.repack_points rp
                             WHERE rp.new_pack_id = target AND rp.point_id = pp.point_id))
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
    SELECT count(*) INTO moved
        FROM gateway.repack_chunks rc
        JOIN gateway.chunks c ON c.account_id = owner_account AND c.chunk_id = rc.chunk_id
        JOIN gateway.repack_sources s ON s.new_pack_id = target AND s.old_pack_id = c.pack_id
        WHERE rc.new_pack_id = target;
    IF staged = 0 OR moved <> staged THEN
        RETURN false;
    END IF;
    UPDATE gateway.chunks c
        SET pack_id = target, "offset" = rc."offset", length = rc.length,
            raw_length = rc.raw_length, compression = rc.compression
        FROM gateway.repack_chunks rc
        WHERE rc.new_pack_id = target AND c.account_id = owner_account AND c.chunk_id = rc.chunk_id;
    -- What stayed in the sources is dead: it leaves the index with them.
    DELETE FROM gateway.chunks c
        USING gateway.repack_sources s
        WHERE s.new_pack_id = target AND c.pack_id = s.old_pack_id;
    INSERT INTO gateway.point_packs (pack_id, point_id)
        SELECT DISTINCT target, pp.point_id
        FROM gateway.point_packs pp JOIN gateway.repack_sources s ON s.old_pack_id = pp.pack_id
        WHERE s.new_pack_id = target
          AND NOT EXISTS (SELECT 1 FROM gateway.point_expirations e WHERE e.point_id = pp.point_id)
        ON CONFLICT DO NOTHING;
    DELETE FROM gateway.point_packs pp
        USING gateway.repack_sources s
        WHERE s.new_pack_id = target AND pp.pack_id = s.old_pack_id;
    INSERT INTO gateway.pack_repacks (old_pack_id, new_pack_id, account_id, repacked_at)
        SELECT s.old_pack_id, target, owner_account, trusted_at
        FROM gateway.repack_sources s WHERE s.new_pack_id = target;
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION repack_pack(text) FROM PUBLIC;

-- ADR 0041's function and one more rule: a repacked pack waits for the restores of its account that
-- started before its condemnation (they may have located a chunk in it before it moved).
CREATE OR REPLACE FUNCTION reclaim_pack(target text, min_condemned_age interval)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trusted_at timestamptz := trusted.now();
    found_pack record;
BEGIN
    IF min_condemned_age IS NULL OR min_condemned_age < interval '0' THEN
        RAISE EXCEPTION 'min_condemned_age must not be negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT p.pack_id, p.account_id, c.condemned_at,
           greatest(p.retain_until,
                    (SELECT max(r.retain_until) FROM gateway.pack_retentions r WHERE r.pack_id = p.pack_id))
               AS locked_until
        INTO found_pack
        FROM gateway.packs p JOIN gateway.pack_condemnations c ON c.pack_id = p.pack_id
        WHERE p.pack_id = target;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('gateway.gc:' || found_pack.account_id, 0));
    IF EXISTS (SELECT 1 FROM gateway.pack_reclaims x WHERE x.pack_id = target)
       OR found_pack.locked_until >= trusted_at
       OR found_pack.condemned_at > trusted_at - min_condemned_age
       OR EXISTS (
           SELECT 1 FROM gateway.point_packs pp
           WHERE pp.pack_id = target
             AND NOT EXISTS (SELECT 1 FROM gateway.point_expirations e WHERE e.point_id = pp.point_id))
       OR EXISTS (
           SELECT 1 FROM gateway.points pt
           WHERE pt.account_id = found_pack.account_id
             AND NOT EXISTS (SELECT 1 FROM gateway.point_references r WHERE r.point_id = pt.point_id)
             AND NOT EXISTS (SELECT 1 FROM gateway.point_expirations e WHERE e.point_id = pt.point_id))
       OR EXISTS (
           SELECT 1 FROM gateway.jobs j
           WHERE j.account_id = found_pack.account_id AND j.kind = 'backup' AND j.state <> 'finished'
             AND j.created_at <= found_pack.condemned_at)
       OR (EXISTS (SELECT 1 FROM gateway.pack_repacks r WHERE r.old_pack_id = target)
           AND EXISTS (
               SELECT 1 FROM gateway.jobs j
               WHERE j.account_id = found_pack.account_id AND j.kind = 'restore' AND j.state <> 'finished'
                 AND j.created_at <= found_pack.condemned_at))
    THEN
        RETURN false;
    END IF;
    DELETE FROM gateway.chunks WHERE pack_id = target;
    INSERT INTO gateway.pack_reclaims (pack_id, reclaimed_at) VALUES (target, trusted_at);
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION reclaim_pack(text, interval) FROM PUBLIC;
"""

REPACK_PRIVILEGES: dict[str, str] = {
    "repack_sources": "SELECT, INSERT",
    "repack_points": "SELECT, INSERT",
    "repack_chunks": "SELECT, INSERT",
    "pack_repacks": "SELECT",
    "pack_liveness": "SELECT, INSERT",
}

REPACK_FUNCTIONS: tuple[str, ...] = ("repack_pack(text)",)
