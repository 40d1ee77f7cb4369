"""Schema ``catalog``: instances (retention settings), versions, points, the file index, outbox, inbox."""

from __future__ import annotations

from strongroom_platform.db import Migration, outbox_shard_migration, outbox_traceparent_migration
from strongroom_platform.inbox import INBOX_DDL, INBOX_PRIVILEGES
from strongroom_platform.outbox import OUTBOX_DDL, OUTBOX_PRIVILEGES
from strongroom_platform.pg_roles import SERVICE_ROLES, SchemaSpec

SCHEMA = "catalog"

_V1 = """
CREATE TABLE instances (
    instance_id text PRIMARY KEY,
    -- "Keep at least one backup version". The seed's default is on. The
    -- scheduler owns this setting; until the catalog consumes it from the
    -- scheduler, every instance keeps this default.
    keep_latest boolean NOT NULL DEFAULT true
);

CREATE TABLE versions (
    version_id text PRIMARY KEY,
    instance_id text NOT NULL REFERENCES instances,
    account_id text NOT NULL,
    created_at timestamptz NOT NULL,
    expired_at timestamptz
);
CREATE INDEX versions_by_instance ON versions (instance_id, created_at DESC, version_id DESC);
CREATE INDEX versions_live_by_age ON versions (created_at) WHERE expired_at IS NULL;

CREATE TABLE points (
    point_id text PRIMARY KEY,
    version_id text NOT NULL REFERENCES versions,
    instance_id text NOT NULL,
    account_id text NOT NULL,
    mount_point text NOT NULL,
    device text NOT NULL,
    fs_type text NOT NULL,
    capacity_bytes bigint NOT NULL,
    manifest_key text NOT NULL,
    file_count bigint NOT NULL,
    total_bytes bigint NOT NULL,
    created_at timestamptz NOT NULL,
    retain_until timestamptz,
    browsable boolean NOT NULL DEFAULT false,
    index_error text
);
CREATE INDEX points_by_version ON points (version_id);

-- The file index: one row per manifest entry, keyed for listing a directory
-- by name. "C" collation: names sort by UTF-8 bytes, like the manifest.
-- No foreign key to points: it would cost a lookup per row of a bulk COPY.
CREATE TABLE entries (
    point_id text NOT NULL,
    parent text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    type smallint NOT NULL,
    mode integer NOT NULL,
    uid bigint NOT NULL,
    gid bigint NOT NULL,
    size bigint NOT NULL,
    mtime_ns bigint NOT NULL,
    link_target text NOT NULL,
    PRIMARY KEY (point_id, parent, name)
);
"""

# The scheduler now sends the keep-latest setting (topic instance-settings-changed);
# settings_at is the meta.occurred_at of the event last applied, so an older event
# arriving later (redelivered or reordered) cannot bring back an older value.
# Instances no settings event reached yet keep the default (on).
_V2 = """
ALTER TABLE instances ADD COLUMN settings_at timestamptz;
"""

ROLE = SERVICE_ROLES["catalog"]

# Immutable versions and points (ADR 0031): the catalog's role may only insert and read them.
# What changed in place is now appended: an expiry is a row of version_expirations (written only by
# expire_due_versions, below), an indexing outcome a row of point_index_outcomes and a
# keep-at-least-one setting a row of keep_latest_settings (the newest row of a point or instance
# wins). Existing state is copied over before its columns go.
_V5_APPEND_ONLY = """
CREATE TABLE version_expirations (
    version_id text PRIMARY KEY REFERENCES versions,
    expired_at timestamptz NOT NULL
);
INSERT INTO version_expirations (version_id, expired_at)
    SELECT version_id, expired_at FROM versions WHERE expired_at IS NOT NULL;
ALTER TABLE versions DROP COLUMN expired_at;
CREATE INDEX versions_by_age ON versions (created_at, version_id COLLATE "C");

CREATE TABLE point_index_outcomes (
    seq bigserial PRIMARY KEY,
    point_id text NOT NULL REFERENCES points,
    browsable boolean NOT NULL,
    index_error text,
    CHECK (NOT (browsable AND index_error IS NOT NULL))
);
CREATE INDEX point_index_outcomes_latest ON point_index_outcomes (point_id, seq DESC);
INSERT INTO point_index_outcomes (point_id, browsable, index_error)
    SELECT point_id, browsable, index_error FROM points WHERE browsable OR index_error IS NOT NULL;
ALTER TABLE points DROP COLUMN browsable, DROP COLUMN index_error;

CREATE TABLE keep_latest_settings (
    seq bigserial PRIMARY KEY,
    instance_id text NOT NULL REFERENCES instances,
    keep_latest boolean NOT NULL,
    -- meta.occurred_at of the settings event (NULL: set without one)
    settings_at timestamptz
);
CREATE INDEX keep_latest_settings_latest ON keep_latest_settings (instance_id, seq DESC);
INSERT INTO keep_latest_settings (instance_id, keep_latest, settings_at)
    SELECT instance_id, keep_latest, settings_at FROM instances WHERE NOT keep_latest OR settings_at IS NOT NULL;
ALTER TABLE instances DROP COLUMN keep_latest, DROP COLUMN settings_at;

-- The one path by which a version expires: 30 days after its creation by the trusted time
-- (trusted.now(), PostgreSQL's clock plus the owner's offset), except an instance's newest version
-- while its latest keep-at-least-one setting is on (the default). Runs as the schema's owner;
-- only the catalog's role may call it, and it takes no time or period from the caller. Returns
-- the versions it expired (at most max_versions), with their points, whose file index it drops.
CREATE FUNCTION expire_due_versions(max_versions integer)
RETURNS TABLE (version_id text, instance_id text, account_id text, expired_at timestamptz, point_ids text[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    trusted_at timestamptz := trusted.now();
    due record;
    point text;
BEGIN
    IF max_versions IS NULL OR max_versions < 1 OR max_versions > 1000 THEN
        RAISE EXCEPTION 'max_versions must be between 1 and 1000, got %', max_versions
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR due IN
        SELECT v.version_id, v.instance_id, v.account_id FROM catalog.versions v
        WHERE v.created_at <= trusted_at - interval '30 days'
          AND NOT EXISTS (SELECT 1 FROM catalog.version_expirations e WHERE e.version_id = v.version_id)
          AND NOT (
              coalesce((SELECT s.keep_latest FROM catalog.keep_latest_settings s
                        WHERE s.instance_id = v.instance_id ORDER BY s.seq DESC LIMIT 1), true)
              AND NOT EXISTS (
                  SELECT 1 FROM catalog.versions n
                  WHERE n.instance_id = v.instance_id
                    AND (n.created_at, n.version_id COLLATE "C") > (v.created_at, v.version_id COLLATE "C")))
        ORDER BY v.created_at, v.version_id COLLATE "C"
        LIMIT max_versions
    LOOP
        INSERT INTO catalog.version_expirations (version_id, expired_at) VALUES (due.version_id, trusted_at)
            ON CONFLICT DO NOTHING;
        CONTINUE WHEN NOT FOUND;  -- a concurrent run expired it first
        SELECT coalesce(array_agg(p.point_id ORDER BY p.point_id COLLATE "C"), '{}') INTO point_ids
            FROM catalog.points p WHERE p.version_id = due.version_id;
        FOREACH point IN ARRAY point_ids LOOP
            -- the lock an indexing transaction holds on the point (repository.PgCatalogTx.get_point)
            PERFORM pg_advisory_xact_lock(hashtextextended('catalog.point:' || point, 0));
        END LOOP;
        DELETE FROM catalog.entries WHERE point_id = ANY (point_ids);
        version_id := due.version_id;
        instance_id := due.instance_id;
        account_id := due.account_id;
        expired_at := trusted_at;
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION expire_due_versions(integer) FROM PUBLIC;
"""

# Cancel, reinstate and holds (ADR 0040), append-only like the rest of the history: the newest row
# of instance_cancellations says whether an instance's backup is canceled (its versions are then
# hidden from every read and expire once their points' Object Lock has passed); a hold keeps every
# version of its instance (by retention or by a cancel) until its row in hold_releases exists.
# expire_due_versions is redefined on version_due, which the loop re-checks under the instance's
# lock, so a reinstatement committed meanwhile wins.
_V6_CANCEL_AND_HOLDS = """
CREATE TABLE instance_cancellations (
    seq bigserial PRIMARY KEY,
    instance_id text NOT NULL REFERENCES instances,
    account_id text NOT NULL,
    canceled boolean NOT NULL,
    at timestamptz NOT NULL,
    -- the instance-deactivated event of a cancel; NULL for a reinstatement
    event_id text UNIQUE,
    subject text NOT NULL DEFAULT ''
);
CREATE INDEX instance_cancellations_latest ON instance_cancellations (instance_id, seq DESC);

CREATE TABLE holds (
    hold_id text PRIMARY KEY,
    instance_id text NOT NULL REFERENCES instances,
    account_id text NOT NULL,
    kind smallint NOT NULL CHECK (kind IN (1, 2)),
    reason text NOT NULL CHECK (reason <> ''),
    placed_by text NOT NULL,
    placed_at timestamptz NOT NULL
);
CREATE INDEX holds_by_instance ON holds (instance_id, placed_at);

CREATE TABLE hold_releases (
    hold_id text PRIMARY KEY REFERENCES holds,
    released_by text NOT NULL,
    released_at timestamptz NOT NULL
);

-- Whether a version is due to expire at trusted_at: not expired yet, its instance under no
-- active hold, and either 30 days old (unless it is the newest of an instance whose latest
-- keep-at-least-one setting is on, the default) or of a canceled instance with every point's
-- Object Lock passed.
CREATE FUNCTION version_due(v catalog.versions, trusted_at timestamptz) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NOT EXISTS (SELECT 1 FROM catalog.version_expirations e WHERE e.version_id = v.version_id)
       AND NOT EXISTS (
           SELECT 1 FROM catalog.holds h WHERE h.instance_id = v.instance_id
              AND NOT EXISTS (SELECT 1 FROM catalog.hold_releases r WHERE r.hold_id = h.hold_id))
       AND (
           (coalesce((SELECT c.canceled FROM catalog.instance_cancellations c
                      WHERE c.instance_id = v.instance_id ORDER BY c.seq DESC LIMIT 1), false)
            AND NOT EXISTS (SELECT 1 FROM catalog.points p
                            WHERE p.version_id = v.version_id AND p.retain_until > trusted_at))
           OR
           (v.created_at <= trusted_at - interval '30 days'
            AND NOT (
                coalesce((SELECT s.keep_latest FROM catalog.keep_latest_settings s
                          WHERE s.instance_id = v.instance_id ORDER BY s.seq DESC LIMIT 1), true)
                AND NOT EXISTS (
                    SELECT 1 FROM catalog.versions n
                    WHERE n.instance_id = v.instance_id
                      AND (n.created_at, n.version_id COLLATE "C") > (v.created_at, v.version_id COLLATE "C"))))
       )
$$;
REVOKE ALL ON FUNCTION version_due(catalog.versions, timestamptz) FROM PUBLIC;

CREATE OR REPLACE FUNCTION expire_due_versions(max_versions integer)
RETURNS TABLE (version_id text, instance_id text, account_id text, expired_at timestamptz, point_ids text[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    trusted_at timestamptz := trusted.now();
    due record;
    point text;
BEGIN
    IF max_versions IS NULL OR max_versions < 1 OR max_versions > 1000 THEN
        RAISE EXCEPTION 'max_versions must be between 1 and 1000, got %', max_versions
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR due IN
        SELECT v.version_id, v.instance_id, v.account_id FROM (
            -- by age (the index on created_at)
            SELECT v1.* FROM catalog.versions v1 WHERE v1.created_at <= trusted_at - interval '30 days'
            UNION
            -- of canceled instances, whatever their age
            SELECT v2.* FROM catalog.versions v2
            WHERE v2.instance_id IN (
                SELECT DISTINCT ON (c.instance_id) c.instance_id FROM catalog.instance_cancellations c
                ORDER BY c.instance_id, c.seq DESC)
        ) v
        WHERE catalog.version_due(v, trusted_at)
        ORDER BY v.created_at, v.version_id COLLATE "C"
        LIMIT max_versions
    LOOP
        -- the lock a reinstatement or a hold takes on the instance: re-check under it
        PERFORM pg_advisory_xact_lock(hashtextextended('catalog.instance:' || due.instance_id, 0));
        CONTINUE WHEN NOT (SELECT catalog.version_due(v, trusted_at) FROM catalog.versions v
                           WHERE v.version_id = due.version_id);
        INSERT INTO catalog.version_expirations (version_id, expired_at) VALUES (due.version_id, trusted_at)
            ON CONFLICT DO NOTHING;
        CONTINUE WHEN NOT FOUND;  -- a concurrent run expired it first
        SELECT coalesce(array_agg(p.point_id ORDER BY p.point_id COLLATE "C"), '{}') INTO point_ids
            FROM catalog.points p WHERE p.version_id = due.version_id;
        FOREACH point IN ARRAY point_ids LOOP
            -- the lock an indexing transaction holds on the point (repository.PgCatalogTx.get_point)
            PERFORM pg_advisory_xact_lock(hashtextextended('catalog.point:' || point, 0));
        END LOOP;
        DELETE FROM catalog.entries WHERE point_id = ANY (point_ids);
        version_id := due.version_id;
        instance_id := due.instance_id;
        account_id := due.account_id;
        expired_at := trusted_at;
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION expire_due_versions(integer) FROM PUBLIC;
"""


def _trigram_index(index: str, table: str, where: str = "") -> str:
    """A pg_trgm GIN index on ``table (name)``; the opclass is looked up wherever the extension is."""
    return f"""
DO $$
DECLARE
    ops_schema text;
BEGIN
    SELECT n.nspname INTO ops_schema FROM pg_opclass o JOIN pg_namespace n ON n.oid = o.opcnamespace
    WHERE o.opcname = 'gin_trgm_ops';
    EXECUTE format(
        'CREATE INDEX {index} ON catalog.{table} USING gin (name %I.gin_trgm_ops){where}', ops_schema);
END
$$;
"""


# The search index (ADR 0043), kept as deltas: a lineage is one filesystem (mount point) of one
# instance; its indexed points get consecutive numbers (seq). A row of search_changes says what a
# path became at point seq of its lineage: type 0 (a tombstone) when it disappeared, else its type,
# size and mtime. The state of a path in point s is its newest row with seq <= s, so a point whose
# files did not change adds no rows. Names are matched by the pg_trgm GIN index (globs) and
# a btree (exact names). pg_trgm is a trusted extension the database's owner creates, in public so
# that the grants of the catalog schema leave it alone; its opclass is looked up wherever it is.
_V7_SEARCH = """
CREATE TABLE search_lineages (
    lineage_id bigserial PRIMARY KEY,
    instance_id text NOT NULL,
    account_id text NOT NULL,
    mount_point text COLLATE "C" NOT NULL,
    UNIQUE (instance_id, mount_point)
);
CREATE INDEX search_lineages_by_account ON search_lineages (account_id, lineage_id);

CREATE TABLE search_points (
    lineage_id bigint NOT NULL REFERENCES search_lineages,
    seq integer NOT NULL CHECK (seq >= 1),
    point_id text NOT NULL UNIQUE,
    PRIMARY KEY (lineage_id, seq)
);

CREATE TABLE search_changes (
    lineage_id bigint NOT NULL,
    path text COLLATE "C" NOT NULL,
    seq integer NOT NULL,
    name text COLLATE "C" NOT NULL,
    type smallint NOT NULL,
    size bigint NOT NULL,
    mtime_ns bigint NOT NULL
);
-- a path's history in a lineage, and the state at the newest seq (DISTINCT ON (path) ... seq DESC)
CREATE UNIQUE INDEX search_changes_by_path ON search_changes (lineage_id, path, seq DESC);
CREATE INDEX search_changes_by_name ON search_changes (name) WHERE type <> 0;
-- case-insensitive globs with a literal prefix (lower() folds ASCII letters under "C", as ~* does)
CREATE INDEX search_changes_by_lower_name ON search_changes (lower(name)) WHERE type <> 0;

CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;
""" + _trigram_index("search_changes_by_name_trgm", "search_changes", " WHERE type <> 0")

# Browse by lineage (ADR 0049): a point indexed after this migration is browsed from tree_changes, the
# deltas of its lineage (the search lineage of its filesystem, numbered by search_points), instead of a
# full copy of its entries. A row says what the entry (parent, name) became at point seq; type 0 is
# a tombstone. The listing of a directory in point s is, per name, its newest row with
# floor_seq(s) <= seq <= s: floor_seq is the first point of the run of deltas s belongs to (a point
# indexed without a usable base starts a run: it is a full baseline). Points indexed before keep their
# rows in entries (no tree_points row). lineage_prunes records up to which seq the rows only expired
# points needed were deleted (retention.prune_lineages); the (lineage_id, seq) indexes find the rows
# written after the previous prune.
_V10_TREE = """
CREATE TABLE tree_points (
    point_id text PRIMARY KEY,
    lineage_id bigint NOT NULL REFERENCES search_lineages,
    seq integer NOT NULL,
    floor_seq integer NOT NULL CHECK (floor_seq BETWEEN 1 AND seq),
    UNIQUE (lineage_id, seq)
);

CREATE TABLE tree_changes (
    lineage_id bigint NOT NULL,
    parent text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    seq integer NOT NULL,
    type smallint NOT NULL,
    mode integer NOT NULL,
    uid bigint NOT NULL,
    gid bigint NOT NULL,
    size bigint NOT NULL,
    mtime_ns bigint NOT NULL,
    link_target text NOT NULL
);
-- a directory's children by name, newest row first (DISTINCT ON (name) ... seq DESC)
CREATE UNIQUE INDEX tree_changes_by_entry ON tree_changes (lineage_id, parent, name, seq DESC);
-- partial on a predicate only the pruning statements state (seq > 0 holds for every row): a generic
-- plan of a search must not take it for a lookup by lineage (a glob took 2.4 s through it)
CREATE INDEX tree_changes_by_seq ON tree_changes (lineage_id, seq) WHERE seq > 0;
CREATE INDEX search_changes_by_seq ON search_changes (lineage_id, seq) WHERE seq > 0;

CREATE TABLE lineage_prunes (
    lineage_id bigint NOT NULL REFERENCES search_lineages,
    upto_seq integer NOT NULL,
    PRIMARY KEY (lineage_id, upto_seq)
);
"""

# Search (ADR 0049): an exact name is found per lineage, in path order, so that a name held by
# many files stops at the first page instead of sorting every match. (name, lineage_id, path) also
# serves what the index on name alone served (equality and ranges on name), which it replaces.
_V11_SEARCH_BY_LINEAGE = """
CREATE INDEX search_changes_by_name_lineage ON search_changes (name, lineage_id, path) WHERE type <> 0;
DROP INDEX search_changes_by_name;
"""

# Suffix and infix globs (ADR 0057): the distinct names of the index, with their own trigram index.
# A glob without a literal prefix first finds the few names it matches here (the posting lists of
# its trigrams are as long as the fleet's distinct names, not its rows: 10x shorter for 10 instances
# of the same layout), then their rows through (name, lineage_id, path). Names are added with the
# rows that carry them and never removed (a name without rows matches nothing).
_V14_SEARCH_NAMES = """
CREATE TABLE search_names (
    name text COLLATE "C" PRIMARY KEY
);
INSERT INTO search_names SELECT DISTINCT name FROM search_changes WHERE type <> 0;
""" + _trigram_index("search_names_trgm", "search_names")

MIGRATIONS: list[Migration] = [
    Migration(1, OUTBOX_DDL),
    Migration(2, INBOX_DDL),
    Migration(3, _V1),
    Migration(4, _V2),
    Migration(5, _V5_APPEND_ONLY),
    Migration(6, _V6_CANCEL_AND_HOLDS),
    Migration(7, _V7_SEARCH),
    # The outbox's traceparent column (ADR 0039).
    outbox_traceparent_migration(8),
    Migration(10, _V10_TREE),
    Migration(11, _V11_SEARCH_BY_LINEAGE),
    # The outbox's shard column: replicas relay different shards, each key in order (ADR 0050).
    outbox_shard_migration(13),
    Migration(14, _V14_SEARCH_NAMES),
]

# What the catalog's role may do, per table (ADR 0031); a new table adds its line here. The file
# index (entries) is derived from the manifests and is rebuilt in place.
PRIVILEGES: dict[str, str] = {
    "outbox": OUTBOX_PRIVILEGES,
    "processed_events": INBOX_PRIVILEGES,
    "instances": "SELECT, INSERT",
    "versions": "SELECT, INSERT",
    "version_expirations": "SELECT",
    "points": "SELECT, INSERT",
    "point_index_outcomes": "SELECT, INSERT",
    "keep_latest_settings": "SELECT, INSERT",
    "entries": "SELECT, INSERT, DELETE",
    # ADR 0040: cancels, reinstatements and holds are appended, never changed.
    "instance_cancellations": "SELECT, INSERT",
    "holds": "SELECT, INSERT",
    "hold_releases": "SELECT, INSERT",
    # ADR 0043: the search index, derived from the manifests, appended as points are indexed.
    "search_lineages": "SELECT, INSERT",
    "search_points": "SELECT, INSERT",
    # ADR 0057: the distinct names, for suffix and infix globs.
    "search_names": "SELECT, INSERT",
    # ADR 0049: rows that only expired points need are deleted (prune_lineages).
    "search_changes": "SELECT, INSERT, DELETE",
    "tree_points": "SELECT, INSERT",
    "tree_changes": "SELECT, INSERT, DELETE",
    "lineage_prunes": "SELECT, INSERT",
}

SPEC = SchemaSpec(
    schema=SCHEMA,
    migrations=MIGRATIONS,
    grants={ROLE: PRIVILEGES},
    executes={ROLE: ("expire_due_versions(integer)",)},
)
