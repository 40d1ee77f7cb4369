"""Schema ``catalog``: instances (retention settings), versions, points, the file index, outbox, inbox."""

from __future__ import annotations

from strongroom_platform.db import Migration, outbox_traceparent_migration
from strongroom_platform.inbox import INBOX_DDL
from strongroom_platform.outbox import OUTBOX_DDL

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

MIGRATIONS: list[Migration] = [
    Migration(1, OUTBOX_DDL),
    Migration(2, INBOX_DDL),
    Migration(3, _V1),
    Migration(4, _V2),
    # The outbox's traceparent column (ADR 0039).
    outbox_traceparent_migration(6),
]
