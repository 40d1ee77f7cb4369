"""The SQL of the gateway's definer functions that move chunk rows or reclaim packs, written once.

``repack_pack`` (ADR 0042, migration 13) and ``move_chunks`` (its update, migration 16) check the
same staging under the account's collection lock and move the staged rows the same way; they differ
in what they do with the rows that stay in the sources and with the sources' references.
``reclaim_pack`` (ADR 0041, migration 11) was replaced in migrations 13 and 16 by itself plus one
rule (which moved-from packs wait for running restores). Every migration renders its version here,
so a rule is written in one place; migration 18 (ADR 0057) renders the concurrent versions of the
two move functions (no running-backup rule, the dead rows stay, an epoch numbers each move).
"""

from __future__ import annotations

from typing import Literal

MoveKind = Literal["repack", "move"]

# What both functions refuse, before anything else (``{backups}``: the running-backup rule of
# migrations 13 and 16, empty from migration 18 on).
_STAGING_REFUSED = """
    IF NOT EXISTS (SELECT 1 FROM gateway.repack_sources s WHERE s.new_pack_id = target)
       OR EXISTS (SELECT 1 FROM gateway.chunks c WHERE c.pack_id = target)
       OR EXISTS (SELECT 1 FROM gateway.pack_condemnations c WHERE c.pack_id = target)
       OR EXISTS (SELECT 1 FROM gateway.pack_repacks r WHERE r.old_pack_id = target){target_moved}
       OR EXISTS (
           SELECT 1 FROM gateway.repack_sources s JOIN gateway.packs p ON p.pack_id = s.old_pack_id
           WHERE s.new_pack_id = target
             AND (p.account_id <> owner_account OR s.old_pack_id = target
                  OR EXISTS (SELECT 1 FROM gateway.pack_repacks r WHERE r.old_pack_id = s.old_pack_id)
                  OR EXISTS (SELECT 1 FROM gateway.pack_condemnations c WHERE c.pack_id = s.old_pack_id)
                  OR EXISTS (SELECT 1 FROM gateway.pack_reclaims x WHERE x.pack_id = s.old_pack_id))){readers}
       OR EXISTS (
           SELECT 1 FROM gateway.points pt
           WHERE pt.account_id = owner_account
             AND NOT EXISTS (SELECT 1 FROM gateway.point_references r WHERE r.point_id = pt.point_id)
             AND NOT EXISTS (SELECT 1 FROM gateway.point_expirations e WHERE e.point_id = pt.point_id)){backups}
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
"""

_TARGET_MOVED = """
       OR EXISTS (SELECT 1 FROM gateway.pack_moves m WHERE m.old_pack_id = target)"""

_RUNNING_BACKUP = """
       OR EXISTS (
           SELECT 1 FROM gateway.jobs j
           WHERE j.account_id = owner_account AND j.kind = 'backup' AND j.state <> 'finished')"""

# repack_pack: every live point referencing a source was scanned (a point committed after the scan
# may use a chunk the scan found dead).
_SCANNED = """
       OR EXISTS (
           SELECT 1 FROM gateway.point_packs pp JOIN gateway.repack_sources s ON s.old_pack_id = pp.pack_id
           WHERE s.new_pack_id = target
             AND NOT EXISTS (SELECT 1 FROM gateway.point_expirations e WHERE e.point_id = pp.point_id)
             AND NOT EXISTS (SELECT 1 FROM gateway.repack_points rp
                             WHERE rp.new_pack_id = target AND rp.point_id = pp.point_id))"""

# move_chunks: the new pack is locked at least as long as every live point referencing a source
# (they all reference it afterwards, ADR 0010).
_LOCKED_LONG_ENOUGH = """
       OR EXISTS (
           SELECT 1 FROM gateway.point_packs pp
           JOIN gateway.repack_sources s ON s.old_pack_id = pp.pack_id AND s.new_pack_id = target
           JOIN gateway.points pt ON pt.point_id = pp.point_id
           WHERE pt.retain_until > target_lock
             AND NOT EXISTS (SELECT 1 FROM gateway.point_expirations e WHERE e.point_id = pp.point_id))"""

_GIVE_LIVE_POINTS_THE_TARGET = """
    INSERT INTO gateway.point_packs (pack_id, point_id)
        SELECT DISTINCT target, pp.point_id
        FROM gateway.point_packs pp JOIN gateway.repack_sources s ON s.old_pack_id = pp.pack_id
        WHERE s.new_pack_id = target
          AND NOT EXISTS (SELECT 1 FROM gateway.point_expirations e WHERE e.point_id = pp.point_id)
        ON CONFLICT DO NOTHING;
"""

_DROP_DEAD_ROWS = """
    -- What stayed in the sources is dead: it leaves the index with them.
    DELETE FROM gateway.chunks c
        USING gateway.repack_sources s
        WHERE s.new_pack_id = target AND c.pack_id = s.old_pack_id;
"""

_DROP_SOURCE_REFERENCES = """
    DELETE FROM gateway.point_packs pp
        USING gateway.repack_sources s
        WHERE s.new_pack_id = target AND pp.pack_id = s.old_pack_id;
"""

# The next epoch of the account's moves (migration 18): commits compare it with the one they read
# before locating their chunks (ADR 0057).
_NEXT_EPOCH = """
    SELECT coalesce(max(e.epoch), 0) + 1 INTO next_epoch FROM (
        SELECT r.epoch FROM gateway.pack_repacks r WHERE r.account_id = owner_account
        UNION ALL SELECT m.epoch FROM gateway.pack_moves m WHERE m.account_id = owner_account) e;
"""


def move_function_sql(kind: MoveKind, *, concurrent: bool) -> str:
    """``CREATE OR REPLACE FUNCTION`` of ``repack_pack`` or ``move_chunks`` and its ``REVOKE``.

    ``concurrent`` false: the functions of migrations 13 and 16 (refuse while a backup of the
    account runs; a repack drops the sources' dead rows). True: migration 18's (ADR 0057): no
    running-backup rule, a repack keeps the dead rows in its sources for ``reclaim_pack`` to drop
    with them, and each move records its account's next epoch.
    """
    repack = kind == "repack"
    name = "repack_pack" if repack else "move_chunks"
    history, columns = ("pack_repacks", "repacked_at") if repack else ("pack_moves", "moved_at")
    declare = "    trusted_at timestamptz := trusted.now();\n    owner_account text;\n"
    declare += "" if repack else "    target_lock timestamptz;\n"
    declare += "    staged integer;\n    located integer;\n"
    declare += "    next_epoch bigint;\n" if concurrent else ""
    select_pack = (
        "SELECT p.account_id INTO owner_account FROM gateway.packs p WHERE p.pack_id = target;"
        if repack
        else "SELECT p.account_id, p.retain_until INTO owner_account, target_lock"
        " FROM gateway.packs p WHERE p.pack_id = target;"
    )
    guards = _STAGING_REFUSED.format(
        target_moved="" if repack else _TARGET_MOVED,
        readers=_SCANNED if repack else _LOCKED_LONG_ENOUGH,
        backups="" if concurrent else _RUNNING_BACKUP,
    )
    body = guards
    if repack and not concurrent:
        body += _DROP_DEAD_ROWS
    body += _GIVE_LIVE_POINTS_THE_TARGET
    if repack:
        body += _DROP_SOURCE_REFERENCES
    epoch_column, epoch_value = "", ""
    if concurrent:
        body += _NEXT_EPOCH
        epoch_column, epoch_value = ", epoch", ", next_epoch"
    body += f"""    INSERT INTO gateway.{history} (old_pack_id, new_pack_id, account_id, {columns}{epoch_column})
        SELECT s.old_pack_id, target, owner_account, trusted_at{epoch_value}
        FROM gateway.repack_sources s WHERE s.new_pack_id = target;
    RETURN true;
"""
    return f"""CREATE OR REPLACE FUNCTION {name}(target text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
{declare}BEGIN
    {select_pack}
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('gateway.gc:' || owner_account, 0));{body}END
$$;
REVOKE ALL ON FUNCTION {name}(text) FROM PUBLIC;
"""


def reclaim_function_sql(*, restores_wait_for: tuple[str, ...] = ()) -> str:
    """``CREATE OR REPLACE FUNCTION reclaim_pack`` (ADR 0041) and its ``REVOKE``.

    ``restores_wait_for``: the history tables (``pack_repacks``, ``pack_moves``) whose source packs
    are not reclaimed while a restore of their account that started before their condemnation runs
    (it may have located a chunk in them before the chunk moved, ADR 0042).
    """
    restore_rule = ""
    if restores_wait_for:
        moved = "\n            OR ".join(
            f"EXISTS (SELECT 1 FROM gateway.{table} m WHERE m.old_pack_id = target)" for table in restores_wait_for
        )
        restore_rule = f"""
       OR (({moved})
           AND EXISTS (
               SELECT 1 FROM gateway.jobs j
               WHERE j.account_id = found_pack.account_id AND j.kind = 'restore' AND j.state <> 'finished'
                 AND j.created_at <= found_pack.condemned_at))"""
    return f"""CREATE OR REPLACE FUNCTION reclaim_pack(target text, min_condemned_age interval)
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
             AND j.created_at <= found_pack.condemned_at){restore_rule}
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
