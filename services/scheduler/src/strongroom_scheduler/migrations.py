"""Schema ``scheduler``: instances, backup jobs, the audit trail, alerts, outbox and processed events."""

from __future__ import annotations

from strongroom_platform.db import Migration, outbox_shard_migration, outbox_traceparent_migration
from strongroom_platform.inbox import INBOX_DDL, INBOX_PRIVILEGES
from strongroom_platform.outbox import OUTBOX_DDL, OUTBOX_PRIVILEGES
from strongroom_platform.pg_roles import SERVICE_ROLES, SchemaSpec

SCHEMA = "scheduler"

_TABLES = """
CREATE TABLE instances (
    instance_id text PRIMARY KEY,
    account_id text NOT NULL,
    name text NOT NULL,
    region text NOT NULL,
    priority smallint NOT NULL,
    daily_start_minute integer NOT NULL CHECK (daily_start_minute >= 0 AND daily_start_minute < 1440),
    keep_latest_version boolean NOT NULL,
    roots text[] NOT NULL,
    activated_at timestamptz NOT NULL,
    token_sha256 text NOT NULL,
    token_expires_at timestamptz NOT NULL,
    next_backup_at timestamptz NOT NULL,
    -- UTC+8 date of the last daily slot processed (job started or slot skipped)
    last_scheduled_on date,
    enrolled boolean NOT NULL,
    hostname text NOT NULL,
    paused boolean NOT NULL,
    canceled boolean NOT NULL,
    succeeded_once boolean NOT NULL,
    backing_up boolean NOT NULL,
    last_error text NOT NULL
);
CREATE INDEX instances_by_account ON instances (account_id, region, activated_at);
CREATE INDEX instances_due ON instances (next_backup_at) WHERE NOT paused AND NOT canceled;

CREATE TABLE jobs (
    job_id text PRIMARY KEY,
    instance_id text NOT NULL REFERENCES instances (instance_id),
    account_id text NOT NULL,
    status smallint NOT NULL,
    trigger smallint NOT NULL,
    priority smallint NOT NULL,
    roots text[] NOT NULL,
    created_at timestamptz NOT NULL,
    seq bigserial NOT NULL,
    finished_at timestamptz,
    error text NOT NULL,
    stats bytea NOT NULL,
    version_id text NOT NULL,
    file_errors text[] NOT NULL
);
CREATE INDEX jobs_by_instance ON jobs (instance_id, created_at DESC, seq DESC);
-- At most one unfinished job (CREATED, QUEUED, RUNNING, CANCELING) per instance.
CREATE UNIQUE INDEX jobs_one_unfinished ON jobs (instance_id) WHERE status IN (1, 2, 3, 7);
"""

# The audit trail of every service (ADR 0027): rows are only ever inserted (by the consumer of
# ``audit-recorded``, once per event id); the triggers refuse UPDATE, DELETE and TRUNCATE to every
# role but a superuser who disables them on purpose.
_AUDIT = """
CREATE TABLE audit_events (
    event_id text PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    service text NOT NULL,
    subject text NOT NULL,
    principal_kind text NOT NULL,
    account_ids text[] NOT NULL,
    method text NOT NULL,
    verb text NOT NULL,
    resources jsonb NOT NULL,
    result_code text NOT NULL,
    result_message text NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_by_account ON audit_events USING gin (account_ids);
CREATE INDEX audit_events_by_time ON audit_events (occurred_at DESC, event_id DESC);
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
"""

# Audit retention (ADR 0057): records are kept for a configured time (STRONGROOM_AUDIT_KEEP_DAYS,
# default 400) and then deleted, in batches, by prune_audit_events only: a SECURITY DEFINER function
# owned by the migration owner (the scheduler's role still has no DELETE) that computes the cut-off
# from the trusted time, refuses to keep less than 90 days, and tells the append-only trigger which
# rows it may let go (both their producer's time and their storage time older than the cut-off).
_AUDIT_RETENTION = """
-- Stored on the trusted timeline (PostgreSQL's clock plus the standalone offset, ADR 0031), which
-- the cut-off follows.
ALTER TABLE audit_events ALTER COLUMN stored_at SET DEFAULT trusted.now();
CREATE INDEX audit_events_by_stored ON audit_events (stored_at);
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prune_before text := current_setting('strongroom.audit_prune_before', true);
BEGIN
    IF TG_OP = 'DELETE' AND coalesce(prune_before, '') <> ''
       AND OLD.stored_at < prune_before::timestamptz AND OLD.occurred_at < prune_before::timestamptz THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE FUNCTION prune_audit_events(keep interval, batch integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz;
    deleted integer;
BEGIN
    IF keep IS NULL OR keep < interval '90 days' THEN
        RAISE EXCEPTION 'the audit trail is kept at least 90 days' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch IS NULL OR batch < 1 OR batch > 10000 THEN
        RAISE EXCEPTION 'batch must be between 1 and 10000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := trusted.now() - keep;
    PERFORM set_config('strongroom.audit_prune_before', cutoff::text, true);
    WITH doomed AS (
        SELECT a.event_id FROM scheduler.audit_events a
        WHERE a.stored_at < cutoff AND a.occurred_at < cutoff
        ORDER BY a.stored_at LIMIT batch FOR UPDATE SKIP LOCKED)
    DELETE FROM scheduler.audit_events a USING doomed d WHERE a.event_id = d.event_id;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    PERFORM set_config('strongroom.audit_prune_before', '', true);
    RETURN deleted;
END
$$;
REVOKE ALL ON FUNCTION prune_audit_events(interval, integer) FROM PUBLIC;
"""

# The alert pipeline (ADR 0037): subscriptions of an account, one in-app message per alert and
# account, and the durable queue of webhook and email deliveries (state 1 pending, 2 delivered,
# 3 dead; a pending row is due at next_attempt_at, which a claim moves to the end of its lease).
_ALERTS = """
CREATE TABLE alert_subscriptions (
    subscription_id text PRIMARY KEY,
    account_id text NOT NULL,
    channel smallint NOT NULL CHECK (channel IN (1, 2)),
    target text NOT NULL,
    kinds smallint[] NOT NULL,
    signing_secret text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX alert_subscriptions_by_account ON alert_subscriptions (account_id, created_at);

CREATE TABLE alert_messages (
    message_id text PRIMARY KEY,
    account_id text NOT NULL,
    alert_event_id text NOT NULL,
    kind smallint NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    instance_id text NOT NULL,
    job_id text NOT NULL,
    occurred_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    read_at timestamptz,
    UNIQUE (account_id, alert_event_id)
);
CREATE INDEX alert_messages_by_account ON alert_messages (account_id, created_at DESC, message_id DESC);
CREATE INDEX alert_messages_unread ON alert_messages (account_id) WHERE read_at IS NULL;

CREATE TABLE alert_deliveries (
    delivery_id text PRIMARY KEY,
    subscription_id text NOT NULL REFERENCES alert_subscriptions (subscription_id) ON DELETE CASCADE,
    account_id text NOT NULL,
    message_id text NOT NULL REFERENCES alert_messages (message_id),
    channel smallint NOT NULL,
    target text NOT NULL,
    state smallint NOT NULL CHECK (state IN (1, 2, 3)),
    attempts integer NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    last_error text NOT NULL,
    created_at timestamptz NOT NULL,
    finished_at timestamptz
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_at) WHERE state = 1;
CREATE INDEX alert_deliveries_by_account ON alert_deliveries (account_id, created_at DESC);
CREATE INDEX alert_deliveries_by_subscription ON alert_deliveries (subscription_id);
"""

# The inventory and the lifecycle statuses (ADR 0040): instances known before activation (activated
# false), their host identity, OS and block devices; released = the inventory says the host is gone
# (STOPPED); prepare_by = when the agent must have enrolled (activation + the preparation timeout;
# NULL: the token's expiry, as before), preparation_failure_noted = the sweep published
# PREPARATION_FAILED for it. One instance per host identity and account, canceled ones aside.
_INVENTORY = """
ALTER TABLE instances
    ADD COLUMN host_id text NOT NULL DEFAULT '',
    ADD COLUMN os text NOT NULL DEFAULT '',
    ADD COLUMN block_devices jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN activated boolean NOT NULL DEFAULT true,
    ADD COLUMN released boolean NOT NULL DEFAULT false,
    ADD COLUMN prepare_by timestamptz,
    ADD COLUMN preparation_failure_noted boolean NOT NULL DEFAULT false;
-- Instances whose token expired unenrolled before this migration failed long ago: nothing to publish.
UPDATE instances SET preparation_failure_noted = true WHERE NOT enrolled AND token_expires_at <= now();
CREATE UNIQUE INDEX instances_one_per_host ON instances (account_id, host_id) WHERE host_id <> '' AND NOT canceled;
CREATE INDEX instances_preparing ON instances (coalesce(prepare_by, token_expires_at))
    WHERE activated AND NOT enrolled AND NOT canceled AND NOT released AND NOT preparation_failure_noted;
DROP INDEX instances_due;
CREATE INDEX instances_due ON instances (next_backup_at)
    WHERE activated AND NOT paused AND NOT canceled AND NOT released;
"""

# Admission control (ADR 0053) counts the fleet's unfinished jobs on every schedule pass: an index of
# those few rows rather than a scan of every job ever run.
_ADMISSION = "CREATE INDEX jobs_unfinished ON jobs (instance_id) WHERE status IN (1, 2, 3, 7)"
# Issue 10's remaining gaps: the agent's reported block-device total and the capacity mismatch
# last alerted (once per differing pair of totals, ADR 0040 update); indexes that let the alert
# pruning (ADR 0037 update) find old finished deliveries and old read messages without a scan.
_CAPACITY_AND_PRUNING = """
ALTER TABLE instances
    ADD COLUMN reported_capacity_bytes bigint NOT NULL DEFAULT 0 CHECK (reported_capacity_bytes >= 0),
    ADD COLUMN capacity_mismatch_noted text NOT NULL DEFAULT '';
CREATE INDEX alert_deliveries_finished ON alert_deliveries (finished_at) WHERE state <> 1;
CREATE INDEX alert_deliveries_by_message ON alert_deliveries (message_id);
CREATE INDEX alert_messages_read ON alert_messages (read_at) WHERE read_at IS NOT NULL;
"""

MIGRATIONS: list[Migration] = [
    Migration(1, OUTBOX_DDL),
    Migration(2, INBOX_DDL),
    Migration(3, _TABLES),
    Migration(4, _AUDIT),
    Migration(8, _ALERTS),
    # ListInstances pages by (account, activation, id): an index walk per page, not a sort (issue 14).
    Migration(9, "CREATE INDEX instances_by_account_page ON instances (account_id, activated_at, instance_id)"),
    Migration(10, _INVENTORY),
    # The outbox's traceparent column (ADR 0039).
    outbox_traceparent_migration(11),
    # The agent's version per instance (ADR 0045).
    Migration(12, "ALTER TABLE instances ADD COLUMN agent_version text NOT NULL DEFAULT ''"),
    Migration(13, _CAPACITY_AND_PRUNING),
    # The outbox's shard column: replicas relay different shards, each key in order (ADR 0050).
    outbox_shard_migration(14),
    Migration(15, _ADMISSION),
    # The audit trail is pruned after its retention (ADR 0057).
    Migration(16, _AUDIT_RETENTION),
]

ROLE = SERVICE_ROLES["scheduler"]

# What the scheduler's role may do, per table (ADR 0031); a new table adds its line here.
PRIVILEGES: dict[str, str] = {
    "outbox": OUTBOX_PRIVILEGES,
    "processed_events": INBOX_PRIVILEGES,
    "instances": "SELECT, INSERT, UPDATE",
    "jobs": "SELECT, INSERT, UPDATE",
    "audit_events": "SELECT, INSERT",
    # alerts (ADR 0037): subscriptions are removed (their deliveries with them); messages are
    # marked read; deliveries change state; old read messages and finished deliveries are pruned
    "alert_subscriptions": "SELECT, INSERT, DELETE",
    "alert_messages": "SELECT, INSERT, UPDATE, DELETE",
    "alert_deliveries": "SELECT, INSERT, UPDATE, DELETE",
}

SPEC = SchemaSpec(
    schema=SCHEMA,
    migrations=MIGRATIONS,
    grants={ROLE: PRIVILEGES},
    executes={ROLE: ("prune_audit_events(interval, integer)",)},
)
