"""Schema ``billing``: instances, versions (with tombstones of expired ones), processed events."""

from __future__ import annotations

from strongroom_platform.db import Migration, outbox_shard_migration, outbox_traceparent_migration
from strongroom_platform.inbox import INBOX_DDL, INBOX_PRIVILEGES
from strongroom_platform.outbox import OUTBOX_DDL, OUTBOX_PRIVILEGES
from strongroom_platform.pg_roles import SERVICE_ROLES, SchemaSpec

SCHEMA = "billing"

_TABLES = """
CREATE TABLE instances (
    instance_id text PRIMARY KEY,
    account_id text NOT NULL,
    -- empty until instance-activated arrives (a point may be seen first)
    region text NOT NULL DEFAULT '',
    activated boolean NOT NULL DEFAULT false,
    canceled boolean NOT NULL DEFAULT false
);
CREATE INDEX instances_by_account ON instances (account_id, region);

CREATE TABLE versions (
    version_id text PRIMARY KEY,
    instance_id text NOT NULL,
    created_at timestamptz NOT NULL,
    capacity_bytes bigint NOT NULL,
    -- expired versions stay as tombstones so that a late point-created cannot revive them
    expired boolean NOT NULL DEFAULT false
);
CREATE INDEX versions_live ON versions (instance_id, created_at DESC) WHERE NOT expired;
"""

# The daily ledger (ADR 0036). When an instance was canceled and a version expired, so that a day
# is billed on the facts as they stood when it ended. Rows expired or canceled before this
# migration keep NULL: gone since forever. Ledger rows are written once per closed day, never changed.
_LEDGER = """
ALTER TABLE instances ADD COLUMN canceled_at timestamptz;
ALTER TABLE versions ADD COLUMN expired_at timestamptz;

CREATE TABLE ledger_closed_days (
    day date PRIMARY KEY,
    closed_at timestamptz NOT NULL
);

CREATE TABLE ledger_days (
    account_id text NOT NULL,
    day date NOT NULL REFERENCES ledger_closed_days (day),
    instances integer NOT NULL CHECK (instances > 0),
    capacity_bytes bigint NOT NULL CHECK (capacity_bytes >= 0),
    billable_gib numeric(24, 4) NOT NULL CHECK (billable_gib >= 0),
    price_per_gib_day numeric(24, 10) NOT NULL CHECK (price_per_gib_day >= 0),
    fee numeric(24, 4) NOT NULL CHECK (fee >= 0),
    plan_gib_days numeric(24, 4) NOT NULL CHECK (plan_gib_days >= 0),
    charged numeric(24, 4) NOT NULL CHECK (charged >= 0),
    PRIMARY KEY (account_id, day)
);

CREATE TABLE ledger_instances (
    account_id text NOT NULL,
    day date NOT NULL,
    instance_id text NOT NULL,
    version_id text NOT NULL,
    capacity_bytes bigint NOT NULL CHECK (capacity_bytes >= 0),
    PRIMARY KEY (account_id, day, instance_id),
    FOREIGN KEY (account_id, day) REFERENCES ledger_days (account_id, day)
);

CREATE TABLE plans (
    plan_id text PRIMARY KEY,
    account_id text NOT NULL,
    gib_days numeric(24, 4) NOT NULL CHECK (gib_days > 0),
    starts_on date NOT NULL,
    ends_on date NOT NULL CHECK (ends_on >= starts_on),
    created_at timestamptz NOT NULL
);
CREATE INDEX plans_by_account ON plans (account_id, ends_on);

CREATE TABLE plan_draws (
    plan_id text NOT NULL REFERENCES plans (plan_id),
    day date NOT NULL,
    gib_days numeric(24, 4) NOT NULL CHECK (gib_days > 0),
    PRIMARY KEY (plan_id, day)
);
"""

# The inventory (ADR 0040), from instance-status-changed: registered = known to the inventory
# (activated or not), released = the inventory says the host is gone (not counted as un-backed-up),
# inventory_capacity_bytes = its block devices (0: unknown; the versions' capacity then), status_at =
# meta.occurred_at of the newest status applied (an older one arriving later changes nothing).
_INVENTORY = """
ALTER TABLE instances
    ADD COLUMN registered boolean NOT NULL DEFAULT false,
    ADD COLUMN released boolean NOT NULL DEFAULT false,
    ADD COLUMN inventory_capacity_bytes bigint NOT NULL DEFAULT 0 CHECK (inventory_capacity_bytes >= 0),
    ADD COLUMN status_at timestamptz;
"""

MIGRATIONS: list[Migration] = [
    Migration(1, INBOX_DDL),
    Migration(2, _TABLES),
    # The audit records of billing's mutating calls (CreatePlan) leave through an outbox (ADR 0027).
    Migration(3, OUTBOX_DDL),
    Migration(4, _LEDGER),
    Migration(5, _INVENTORY),
    # The outbox's traceparent column (ADR 0039).
    outbox_traceparent_migration(6),
    # The outbox's shard column: replicas relay different shards, each key in order (ADR 0050).
    outbox_shard_migration(8),
]

ROLE = SERVICE_ROLES["billing"]

# What the billing service's role may do, per table (ADR 0031); a new table adds its line here.
PRIVILEGES: dict[str, str] = {
    "outbox": OUTBOX_PRIVILEGES,
    "processed_events": INBOX_PRIVILEGES,
    "instances": "SELECT, INSERT, UPDATE",
    "versions": "SELECT, INSERT, UPDATE",
    # The ledger (ADR 0036): each closed day is written once and never changed.
    "ledger_closed_days": "SELECT, INSERT",
    "ledger_days": "SELECT, INSERT",
    "ledger_instances": "SELECT, INSERT",
    "plans": "SELECT, INSERT",
    "plan_draws": "SELECT, INSERT",
}

SPEC = SchemaSpec(schema=SCHEMA, migrations=MIGRATIONS, grants={ROLE: PRIVILEGES})
