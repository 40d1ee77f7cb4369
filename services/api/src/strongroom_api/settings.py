"""Settings of the REST edge; the only place that reads its environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from strongroom_platform.settings import (
    BackendTls,
    PlaintextRefused,
    SettingsError,
    TlsSettings,
    env_int,
    env_str,
    insecure_plaintext_from_env,
)

from strongroom_api.rules import BACKENDS


@dataclass(frozen=True, slots=True)
class Settings:
    """Environment:
    STRONGROOM_API_LISTEN: host:port of the HTTPS listener (default 127.0.0.1:0, any free port;
        announced as ``LISTENING api <host:port>``).
    STRONGROOM_{SCHEDULER,CATALOG,RESTORE,BILLING,GATEWAY}_ADDR: the services' public gRPC listeners.
    STRONGROOM_TLS_CERT, STRONGROOM_TLS_KEY: the certificate the listener serves (re-read when the
        files change); STRONGROOM_TLS_CA: the CA bundle trusted in the services (default system roots).
        STRONGROOM_TLS_CLIENT_CA is ignored: operators hold no client certificate.
    STRONGROOM_INSECURE_PLAINTEXT=1: plain HTTP and plaintext gRPC (development and tests only).
    STRONGROOM_API_MAX_BODY_BYTES: largest request body (default 1048576).
    STRONGROOM_API_CALL_TIMEOUT: seconds a service call may take (default 30).
    STRONGROOM_API_IDEMPOTENCY_TTL: seconds an Idempotency-Key is remembered (default 86400).
    STRONGROOM_API_IDEMPOTENCY_MAX_KEYS: most keys remembered in memory (default 100000; the oldest
        go first; without a database only).
    STRONGROOM_PG_DSN (optional): the edge's own role ``strongroom_api`` on schema ``api``; given, the
        keys live there, shared by every edge replica (ADR 0055); unset, in this process's memory.
        STRONGROOM_PG_MIGRATE_DSN (the migration owner: migrate ``api`` first) and STRONGROOM_PG_TLS_*
        as for the services.
    """

    backends: Mapping[str, str]
    tls: TlsSettings | None
    insecure_plaintext: bool
    listen: str = "127.0.0.1:0"
    max_body_bytes: int = 1 << 20
    call_timeout: float = 30.0
    idempotency_ttl_seconds: int = 86_400
    idempotency_max_keys: int = 100_000
    pg_dsn: str | None = None
    pg_migrate_dsn: str | None = None
    pg_tls: BackendTls = BackendTls()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        backends = {name: env_str(environ, f"STRONGROOM_{name.upper()}_ADDR") for name in BACKENDS}
        tls = TlsSettings.from_env(environ)
        insecure = insecure_plaintext_from_env(environ, tls)
        if not insecure and (tls is None or not tls.has_identity):
            raise PlaintextRefused(
                "no TLS certificate (set STRONGROOM_TLS_CERT and STRONGROOM_TLS_KEY); "
                "plain HTTP needs STRONGROOM_INSECURE_PLAINTEXT=1"
            )
        settings = cls(
            backends=backends,
            tls=tls,
            insecure_plaintext=insecure,
            listen=env_str(environ, "STRONGROOM_API_LISTEN", "127.0.0.1:0"),
            max_body_bytes=env_int(environ, "STRONGROOM_API_MAX_BODY_BYTES", 1 << 20),
            call_timeout=float(env_int(environ, "STRONGROOM_API_CALL_TIMEOUT", 30)),
            idempotency_ttl_seconds=env_int(environ, "STRONGROOM_API_IDEMPOTENCY_TTL", 86_400),
            idempotency_max_keys=env_int(environ, "STRONGROOM_API_IDEMPOTENCY_MAX_KEYS", 100_000),
            pg_dsn=environ.get("STRONGROOM_PG_DSN") or None,
            pg_migrate_dsn=environ.get("STRONGROOM_PG_MIGRATE_DSN") or None,
            pg_tls=BackendTls.from_env(environ, "STRONGROOM_PG_TLS"),
        )
        if settings.max_body_bytes < 1024 or settings.call_timeout < 1:
            raise SettingsError("STRONGROOM_API_MAX_BODY_BYTES must be ≥ 1024 and STRONGROOM_API_CALL_TIMEOUT ≥ 1")
        if settings.pg_migrate_dsn is not None and settings.pg_dsn is None:
            raise SettingsError("STRONGROOM_PG_MIGRATE_DSN needs STRONGROOM_PG_DSN (the edge's own role)")
        if settings.idempotency_ttl_seconds < 60 or settings.idempotency_max_keys < 1:
            raise SettingsError("STRONGROOM_API_IDEMPOTENCY_TTL must be ≥ 60 and _MAX_KEYS ≥ 1")
        host, _, port = settings.listen.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"STRONGROOM_API_LISTEN must be host:port, got {settings.listen!r}")
        return settings
