"""Schema ``gateway``: instances and their credentials, jobs, packs, chunks, points."""

from __future__ import annotations

from strongroom_platform.db import Migration, outbox_shard_migration, outbox_traceparent_migration
from strongroom_platform.inbox import INBOX_DDL, INBOX_PRIVILEGES
from strongroom_platform.outbox import OUTBOX_DDL, OUTBOX_PRIVILEGES
from strongroom_platform.pg_roles import SERVICE_ROLES, SchemaSpec

from strongroom_gateway.agent_cert_store import AGENT_CERTIFICATES_DDL
from strongroom_gateway.gc.concurrent_schema import CONCURRENT_DDL
from strongroom_gateway.gc.moves_schema import MOVES_DDL, MOVES_FUNCTIONS, MOVES_PRIVILEGES
from strongroom_gateway.gc.point_refs import POINT_REFS_DDL, POINT_REFS_PRIVILEGES
from strongroom_gateway.gc.repack_schema import REPACK_DDL, REPACK_FUNCTIONS, REPACK_PRIVILEGES
from strongroom_gateway.gc.schema import GC_DDL, GC_FUNCTIONS, GC_PRIVILEGES

SCHEMA = "gateway"

_V1 = """
CREATE TABLE accounts (
    account_id text PRIMARY KEY,
    chunk_id_key bytea NOT NULL CHECK (length(chunk_id_key) = 32),
    chunker_seed bigint NOT NULL CHECK (chunker_seed BETWEEN 0 AND 4294967295),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE instances (
    instance_id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (account_id),
    -- SHA-256 hex of the unused one-time enrollment token; NULL once used or revoked.
    token_sha256 text UNIQUE,
    token_expires_at timestamptz,
    -- SHA-256 hex of the secret part of the agent credential; NULL until enrolled or when revoked.
    credential_sha256 text,
    enrolled_at timestamptz,
    revoked boolean NOT NULL DEFAULT false,
    hostname text NOT NULL DEFAULT '',
    -- Sum of the filesystem capacities the agent reported in its last hello.
    capacity_bytes bigint NOT NULL DEFAULT 0
);

CREATE TABLE jobs (
    job_id text PRIMARY KEY,
    -- Delivery order: the order the requests were consumed in.
    seq bigserial NOT NULL,
    -- No foreign key: a job request may arrive before the instance's activation
    -- (different topics, no mutual order); it waits until the agent connects.
    instance_id text NOT NULL,
    account_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('backup', 'restore')),
    command bytea NOT NULL,
    state text NOT NULL CHECK (state IN ('queued', 'delivered', 'running', 'finished')),
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    point_id text,
    version_id text UNIQUE,
    version_created_at timestamptz
);
CREATE INDEX jobs_unfinished ON jobs (instance_id, seq) WHERE state <> 'finished';

CREATE TABLE packs (
    pack_id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (account_id),
    object_key text NOT NULL,
    size bigint NOT NULL,
    created_at timestamptz NOT NULL,
    retain_until timestamptz NOT NULL
);

CREATE TABLE chunks (
    account_id text NOT NULL,
    chunk_id bytea NOT NULL CHECK (length(chunk_id) = 32),
    pack_id text NOT NULL REFERENCES packs (pack_id),
    "offset" bigint NOT NULL,
    length integer NOT NULL,
    raw_length integer NOT NULL,
    compression smallint NOT NULL,
    PRIMARY KEY (account_id, chunk_id)
);

CREATE TABLE points (
    point_id text PRIMARY KEY,
    account_id text NOT NULL,
    instance_id text NOT NULL,
    job_id text NOT NULL REFERENCES jobs (job_id),
    version_id text NOT NULL,
    mount_point text NOT NULL,
    filesystem bytea NOT NULL,
    manifest_key text NOT NULL,
    file_count bigint NOT NULL,
    total_bytes bigint NOT NULL,
    created_at timestamptz NOT NULL,
    retain_until timestamptz NOT NULL,
    UNIQUE (job_id, mount_point)
);
"""

# Encryption at rest (ADR 0015): wrapped per-account data keys; the format version of each pack.
_V4_ENCRYPTION = """
CREATE TABLE account_keys (
    account_id text PRIMARY KEY REFERENCES accounts (account_id),
    -- Id of the master key that wrapped this data key (changes when re-wrapped after a rotation).
    master_key_id text NOT NULL,
    -- nonce (12) | AES-256-GCM(data key) | tag (16); never the data key in the clear.
    wrapped_key bytea NOT NULL CHECK (length(wrapped_key) = 60),
    created_at timestamptz NOT NULL
);

-- Existing packs were written in the plaintext format 1.
ALTER TABLE packs ADD COLUMN format_version smallint NOT NULL DEFAULT 1;
"""

# Pinned object versions (ADR 0025): every pack and manifest is read by the version id it was
# written as, so a delete marker or a later PUT on its key changes nothing a restore reads. Rows
# written before this migration keep NULL and are read at the latest version, as before.
_V5_VERSION_IDS = """
ALTER TABLE packs ADD COLUMN version_id text CHECK (length(version_id) BETWEEN 1 AND 1024);
ALTER TABLE points ADD COLUMN manifest_version_id text CHECK (length(manifest_version_id) BETWEEN 1 AND 1024);
"""

# The filesystems a point may be taken of (issue 9): recorded at enrollment (approved), or seen
# later in a hello and kept pending until an operator approves them.
_V6_INSTANCE_FILESYSTEMS = """
CREATE TABLE instance_filesystems (
    instance_id text NOT NULL REFERENCES instances (instance_id),
    mount_point text NOT NULL,
    filesystem bytea NOT NULL,
    approved boolean NOT NULL,
    first_seen_at timestamptz NOT NULL,
    approved_at timestamptz,
    PRIMARY KEY (instance_id, mount_point)
);
"""

# The instance's region and name from instance-activated, for its disaster-recovery record in the
# bucket (ADR 0032). Instances activated before keep '' until they are activated again.
_V9_INSTANCE_IDENTITY = """
ALTER TABLE instances
    ADD COLUMN region text NOT NULL DEFAULT '',
    ADD COLUMN name text NOT NULL DEFAULT '';
"""

# Verification (ADR 0033): verification jobs, the damage they found, when each pack and point was
# last checked (the daily sample re-reads the least recently checked packs), and the one sample of
# each day.
_V10_VERIFICATION = """
CREATE TABLE verifications (
    verification_id text PRIMARY KEY,
    -- '' for the daily sample, which spans every account.
    account_id text NOT NULL,
    scope text NOT NULL CHECK (scope IN ('point', 'instance', 'account', 'sample')),
    -- The point or instance verified ('' for account and sample).
    target_id text NOT NULL DEFAULT '',
    -- The instance of a point or instance verification ('' otherwise), for listing by instance.
    instance_id text NOT NULL DEFAULT '',
    state text NOT NULL CHECK (state IN ('queued', 'running', 'clean', 'damaged', 'failed')),
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    finished_at timestamptz,
    -- The gateway process running it, until when; an expired lease lets another replica restart it.
    lease_owner text,
    lease_until timestamptz,
    points_total integer NOT NULL DEFAULT 0,
    points_done integer NOT NULL DEFAULT 0,
    packs_checked bigint NOT NULL DEFAULT 0,
    bytes_read bigint NOT NULL DEFAULT 0,
    damaged_files bigint NOT NULL DEFAULT 0,
    damaged_packs integer NOT NULL DEFAULT 0,
    error text NOT NULL DEFAULT '' CHECK (length(error) <= 4096)
);
CREATE INDEX verifications_pending ON verifications (created_at) WHERE state IN ('queued', 'running');
CREATE INDEX verifications_by_account ON verifications (account_id, created_at DESC);

-- The first damaged files of a verification (the count is verifications.damaged_files).
CREATE TABLE verification_damaged_files (
    verification_id text NOT NULL REFERENCES verifications (verification_id),
    seq integer NOT NULL,
    point_id text NOT NULL,
    path text NOT NULL CHECK (length(path) <= 4096),
    reason text NOT NULL CHECK (length(reason) <= 8192),
    PRIMARY KEY (verification_id, seq)
);

CREATE TABLE verification_damaged_packs (
    verification_id text NOT NULL REFERENCES verifications (verification_id),
    pack_id text NOT NULL,
    reason text NOT NULL CHECK (length(reason) <= 8192),
    PRIMARY KEY (verification_id, pack_id)
);

-- When each pack was last read back in full; a pack never checked counts from its creation (every
-- chunk was verified when it was uploaded).
CREATE TABLE pack_checks (
    pack_id text PRIMARY KEY REFERENCES packs (pack_id),
    checked_at timestamptz NOT NULL,
    damaged_chunks integer NOT NULL,
    reason text NOT NULL DEFAULT ''
);

-- Per point: the last verification that checked it; full = every pack it references was read.
CREATE TABLE point_checks (
    point_id text PRIMARY KEY REFERENCES points (point_id),
    account_id text NOT NULL,
    instance_id text NOT NULL,
    point_created_at timestamptz NOT NULL,
    checked_at timestamptz NOT NULL,
    full_check boolean NOT NULL,
    damaged_files bigint NOT NULL,
    verification_id text NOT NULL
);
CREATE INDEX point_checks_by_instance ON point_checks (instance_id, point_created_at DESC);

-- One daily sample per UTC day, whichever replica claims the day first.
CREATE TABLE verification_days (
    day date PRIMARY KEY,
    verification_id text NOT NULL
);
"""

# Immutable keys and packs (ADR 0031): the gateway's role may not UPDATE or DELETE account_keys,
# packs, chunks or points. A data key re-wrapped under a new master key is a new row of
# account_key_wraps (the newest wrap wins; none: the account_keys row); an Object Lock extension
# (ADR 0010) is a row of pack_retentions (a pack is locked until the latest of its own date and these).
_V8_APPEND_ONLY = """
CREATE TABLE account_key_wraps (
    account_id text NOT NULL REFERENCES account_keys (account_id),
    seq bigserial NOT NULL,
    master_key_id text NOT NULL,
    wrapped_key bytea NOT NULL CHECK (length(wrapped_key) = 60),
    wrapped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, seq)
);

CREATE TABLE pack_retentions (
    pack_id text NOT NULL REFERENCES packs (pack_id),
    retain_until timestamptz NOT NULL,
    PRIMARY KEY (pack_id, retain_until)
);
"""

MIGRATIONS: list[Migration] = [
    Migration(1, OUTBOX_DDL),
    Migration(2, INBOX_DDL),
    Migration(3, _V1),
    Migration(4, _V4_ENCRYPTION),
    Migration(5, _V5_VERSION_IDS),
    Migration(6, _V6_INSTANCE_FILESYSTEMS),
    # Agent certificates and their deny-list (ADR 0028).
    Migration(7, AGENT_CERTIFICATES_DDL),
    Migration(8, _V8_APPEND_ONLY),
    Migration(9, _V9_INSTANCE_IDENTITY),
    Migration(10, _V10_VERIFICATION),
    # Garbage collection (ADR 0041): expirations, point references, condemned and reclaimed packs.
    Migration(11, GC_DDL),
    # Repacking (ADR 0042): staged moves, repacked packs, measured liveness; reclaim_pack waits for restores.
    Migration(13, REPACK_DDL),
    # The outbox's traceparent column (ADR 0039). 12 is unused (reserved for the lifecycle work, not needed).
    outbox_traceparent_migration(14),
    # Generational moves (ADR 0042, update of 2026-12-06): moved packs, measured heat, move_chunks.
    Migration(16, MOVES_DDL),
    # The outbox's shard column: replicas relay different shards, each key in order (ADR 0050).
    outbox_shard_migration(17),
    # Moves and repacks while backups run (ADR 0057): move epochs, the functions without the
    # running-backup rule.
    Migration(18, CONCURRENT_DDL),
    # Each point's chunk references per pack and the move epoch they are exact at: a day-2 commit
    # counts only its changes while no move touched its base's packs (ADR 0034, update of session 5).
    Migration(20, POINT_REFS_DDL),
    # A scheduled backup's start window (ADR 0053, session 6): held past it, the job is skipped.
    Migration(22, "ALTER TABLE jobs ADD COLUMN start_before timestamptz;"),
]

ROLE = SERVICE_ROLES["gateway"]

# What the gateway's role may do, per table (ADR 0031); a new table adds its line here.
PRIVILEGES: dict[str, str] = {
    "outbox": OUTBOX_PRIVILEGES,
    "processed_events": INBOX_PRIVILEGES,
    "accounts": "SELECT, INSERT",
    "account_keys": "SELECT, INSERT",
    "account_key_wraps": "SELECT, INSERT",
    "instances": "SELECT, INSERT, UPDATE",
    "instance_filesystems": "SELECT, INSERT, UPDATE (approved, approved_at)",
    "agent_certificates": "SELECT, INSERT, UPDATE (revoked_at, revoke_reason)",
    "jobs": "SELECT, INSERT, UPDATE",
    "packs": "SELECT, INSERT",
    "pack_retentions": "SELECT, INSERT",
    "chunks": "SELECT, INSERT",
    "points": "SELECT, INSERT",
    # Verification (ADR 0033): jobs and their progress change; a restarted job clears its findings.
    "verifications": "SELECT, INSERT, UPDATE",
    "verification_damaged_files": "SELECT, INSERT, DELETE",
    "verification_damaged_packs": "SELECT, INSERT, DELETE",
    "pack_checks": "SELECT, INSERT, UPDATE",
    "point_checks": "SELECT, INSERT, UPDATE",
    "verification_days": "SELECT, INSERT",
    **GC_PRIVILEGES,
    **REPACK_PRIVILEGES,
    **MOVES_PRIVILEGES,
    **POINT_REFS_PRIVILEGES,
}

SPEC = SchemaSpec(
    schema=SCHEMA,
    migrations=MIGRATIONS,
    grants={ROLE: PRIVILEGES},
    executes={ROLE: GC_FUNCTIONS + REPACK_FUNCTIONS + MOVES_FUNCTIONS},
)
