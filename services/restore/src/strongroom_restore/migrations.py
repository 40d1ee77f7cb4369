"""Schema ``restore``: restore jobs, outbox, inbox."""

from __future__ import annotations

from strongroom_platform.db import Migration, outbox_shard_migration, outbox_traceparent_migration
from strongroom_platform.inbox import INBOX_DDL, INBOX_PRIVILEGES
from strongroom_platform.outbox import OUTBOX_DDL, OUTBOX_PRIVILEGES
from strongroom_platform.pg_roles import SERVICE_ROLES, SchemaSpec

SCHEMA = "restore"

_V1 = """
CREATE TABLE restore_jobs (
    restore_job_id text PRIMARY KEY,
    account_id text NOT NULL,
    point_id text NOT NULL,
    source_instance_id text NOT NULL,
    target_instance_id text NOT NULL,
    status smallint NOT NULL,
    include_paths text[] NOT NULL,
    exclude_paths text[] NOT NULL,
    target_path text NOT NULL,
    conflict_policy smallint NOT NULL,
    error text NOT NULL DEFAULT '',
    -- serialized strongroom.common.v1.JobStats
    stats bytea NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL,
    -- event time of the last applied restore-updated (older updates are stale)
    updated_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX restore_jobs_by_target ON restore_jobs (target_instance_id, created_at DESC);
CREATE INDEX restore_jobs_by_source ON restore_jobs (source_instance_id, created_at DESC);
"""

# Files a restore could not write (ADR 0030): paths and reasons, index for index.
_V4 = """
ALTER TABLE restore_jobs
    ADD COLUMN failed_paths text[] NOT NULL DEFAULT '{}',
    ADD COLUMN failed_reasons text[] NOT NULL DEFAULT '{}';
"""

MIGRATIONS: list[Migration] = [
    Migration(1, OUTBOX_DDL),
    Migration(2, INBOX_DDL),
    Migration(3, _V1),
    Migration(4, _V4),
    # The outbox's traceparent column (ADR 0039).
    outbox_traceparent_migration(5),
    # The outbox's shard column: replicas relay different shards, each key in order (ADR 0050).
    outbox_shard_migration(7),
]

ROLE = SERVICE_ROLES["restore"]

# What the restore service's role may do, per table (ADR 0031); a new table adds its line here.
PRIVILEGES: dict[str, str] = {
    "outbox": OUTBOX_PRIVILEGES,
    "processed_events": INBOX_PRIVILEGES,
    "restore_jobs": "SELECT, INSERT, UPDATE",
}

SPEC = SchemaSpec(schema=SCHEMA, migrations=MIGRATIONS, grants={ROLE: PRIVILEGES})
