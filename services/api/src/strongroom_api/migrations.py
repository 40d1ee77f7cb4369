"""The REST edge's own schema (``api``, ADR 0055): Idempotency-Keys shared by every edge replica.

The edge's role (``strongroom_api``) is not one of the five service roles: it reads no token, no
account data, nothing of another schema. It may only claim, complete, release and expire keys.
"""

from __future__ import annotations

from strongroom_platform.db import Migration
from strongroom_platform.pg_roles import SchemaSpec

SCHEMA = "api"
ROLE = "strongroom_api"

_KEYS = """
-- One claimed key per credential (scope: SHA-256 of the Authorization value, never the token).
-- status/body are NULL while the first request runs; set once when its answer is stored.
CREATE TABLE idempotency_keys (
    scope        text NOT NULL CHECK (scope ~ '^[0-9a-f]{64}$'),
    key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint  text NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    claimed_at   timestamptz NOT NULL,
    status       smallint CHECK (status BETWEEN 100 AND 599),
    body         bytea,
    PRIMARY KEY (scope, key),
    CHECK ((status IS NULL) = (body IS NULL))
);
-- Expiry deletes the oldest claims first.
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (claimed_at);
"""

MIGRATIONS: list[Migration] = [Migration(1, _KEYS)]

# A key is a cache entry with a lifetime, not a row of history: released (an outcome that may change
# on retry) and expired keys are deleted, and the answer is written once into the claim's row.
PRIVILEGES: dict[str, str] = {
    "idempotency_keys": "SELECT, INSERT, UPDATE (fingerprint, claimed_at, status, body), DELETE",
}

SPEC = SchemaSpec(schema=SCHEMA, migrations=MIGRATIONS, grants={ROLE: PRIVILEGES})
