"""Settings shared by every service process, read once from the environment.

Only ``from_env`` functions read the environment; everything else receives a
frozen settings object (no import-time configuration).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class SettingsError(ValueError):
    """A required setting is missing or malformed; the message names the variable."""


def env_str(environ: Mapping[str, str], name: str, default: str | None = None) -> str:
    """The variable's value, or ``default``; raises SettingsError when required and missing."""
    value = environ.get(name, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise SettingsError(f"environment variable {name} is required")
    return value


def env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True, slots=True)
class S3Settings:
    endpoint: str
    access_key: str
    secret_key: str
    secure: bool
    bucket: str
    region: str


@dataclass(frozen=True, slots=True)
class PlatformSettings:
    """Connections every service needs.

    Environment:
        STRONGROOM_PG_DSN: PostgreSQL server DSN (each service uses its own schema).
        STRONGROOM_KAFKA_BOOTSTRAP: host:port of a Kafka-compatible broker.
        STRONGROOM_KAFKA_IDEMPOTENT: enable producer idempotence (default on; off for Tansu).
        STRONGROOM_OBJECT_STORE: "s3" (default) or "file:<directory>" (standalone mode).
        STRONGROOM_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY, _SECURE, _BUCKET, _REGION: S3 access.
        STRONGROOM_OTEL: "none" (default), "console" or "otlp".
        STRONGROOM_OUTBOX_REPLAY: "1" in standalone mode, whose in-memory broker forgets
            everything on restart: the outbox keeps published events and publishes them
            all again at start (consumers deduplicate by event id).
    """

    pg_dsn: str
    kafka_bootstrap: str
    kafka_idempotent: bool
    object_store: str
    s3: S3Settings | None
    otel: str
    outbox_replay: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PlatformSettings:
        object_store = env_str(environ, "STRONGROOM_OBJECT_STORE", "s3")
        s3 = None
        if object_store == "s3":
            s3 = S3Settings(
                endpoint=env_str(environ, "STRONGROOM_S3_ENDPOINT"),
                access_key=env_str(environ, "STRONGROOM_S3_ACCESS_KEY"),
                secret_key=env_str(environ, "STRONGROOM_S3_SECRET_KEY"),
                secure=env_bool(environ, "STRONGROOM_S3_SECURE", False),
                bucket=env_str(environ, "STRONGROOM_S3_BUCKET", "strongroom"),
                region=env_str(environ, "STRONGROOM_S3_REGION", "us-east-1"),
            )
        elif not object_store.startswith("file:"):
            raise SettingsError(f"STRONGROOM_OBJECT_STORE must be 's3' or 'file:<dir>', got {object_store!r}")
        otel = env_str(environ, "STRONGROOM_OTEL", "none")
        if otel not in {"none", "console", "otlp"}:
            raise SettingsError(f"STRONGROOM_OTEL must be none, console or otlp, got {otel!r}")
        return cls(
            pg_dsn=env_str(environ, "STRONGROOM_PG_DSN"),
            kafka_bootstrap=env_str(environ, "STRONGROOM_KAFKA_BOOTSTRAP"),
            kafka_idempotent=env_bool(environ, "STRONGROOM_KAFKA_IDEMPOTENT", True),
            object_store=object_store,
            s3=s3,
            otel=otel,
            outbox_replay=env_bool(environ, "STRONGROOM_OUTBOX_REPLAY", False),
        )
