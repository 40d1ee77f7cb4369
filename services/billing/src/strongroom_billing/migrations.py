"""Schema ``billing``: instances, versions (with tombstones of expired ones), processed events."""

from __future__ import annotations

from strongroom_platform.db import Migration
from strongroom_platform.inbox import INBOX_DDL, INBOX_PRIVILEGES
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

MIGRATIONS: list[Migration] = [Migration(1, INBOX_DDL), Migration(2, _TABLES)]

ROLE = SERVICE_ROLES["billing"]

# What the billing service's role may do, per table (ADR 0031); a new table adds its line here.
PRIVILEGES: dict[str, str] = {
    "processed_events": INBOX_PRIVILEGES,
    "instances": "SELECT, INSERT, UPDATE",
    "versions": "SELECT, INSERT, UPDATE",
}

SPEC = SchemaSpec(schema=SCHEMA, migrations=MIGRATIONS, grants={ROLE: PRIVILEGES})
