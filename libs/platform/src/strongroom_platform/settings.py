"""Settings shared by every service process, read once from the environment.

Only ``from_env`` functions read the environment; everything else receives a
frozen settings object (no import-time configuration).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from strongroom_telemetry.config import TelemetrySettingsError, parse_exporter


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


INSECURE_PLAINTEXT_ENV = "STRONGROOM_INSECURE_PLAINTEXT"


class PlaintextRefused(SettingsError):
    """A listener or connection would carry plaintext and the escape hatch is not set."""


def _partitions(environ: Mapping[str, str]) -> int | None:
    """STRONGROOM_KAFKA_PARTITIONS: None when unset (the registry's count), else 1 to 1000."""
    if not environ.get("STRONGROOM_KAFKA_PARTITIONS"):
        return None
    count = env_int(environ, "STRONGROOM_KAFKA_PARTITIONS", 0)
    if not 1 <= count <= 1000:
        raise SettingsError(f"STRONGROOM_KAFKA_PARTITIONS must be between 1 and 1000, got {count}")
    return count


def _path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name, "").strip()
    return Path(value) if value else None


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The TLS identity and trust of one process's gRPC endpoints.

    Attributes:
        cert_file: PEM certificate (chain, leaf first) this process presents: on its listeners, and
            as its client certificate when it calls a peer that requires mutual TLS.
        key_file: the PEM private key of ``cert_file``.
        ca_file: PEM bundle of the CAs whose certificates this process trusts in the servers it
            calls (peers); None: the system's trust store.
        client_ca_file: PEM bundle of the CAs whose client certificates the listeners accept;
            with it, a client certificate is required (gRPC cannot verify an optional one).
    """

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    client_ca_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise SettingsError("a TLS certificate needs its key and a key its certificate (set both or neither)")

    @property
    def require_client_cert(self) -> bool:
        """Listeners require and verify client certificates (a client CA is configured)."""
        return self.client_ca_file is not None

    @property
    def has_identity(self) -> bool:
        """A certificate and key are configured (the process can serve TLS)."""
        return self.cert_file is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], prefix: str = "STRONGROOM_TLS") -> TlsSettings | None:
        """``<prefix>_CERT``, ``<prefix>_KEY``, ``<prefix>_CA``, ``<prefix>_CLIENT_CA``; None when none is set.

        A listener with its own identity (the gateway's agent port) uses its own ``prefix``.
        """
        cert, key = _path(environ, f"{prefix}_CERT"), _path(environ, f"{prefix}_KEY")
        if (cert is None) != (key is None):
            raise SettingsError(f"{prefix}_CERT and {prefix}_KEY go together (set both or neither)")
        settings = cls(
            cert_file=cert,
            key_file=key,
            ca_file=_path(environ, f"{prefix}_CA"),
            client_ca_file=_path(environ, f"{prefix}_CLIENT_CA"),
        )
        if settings == cls():
            return None
        if settings.client_ca_file is not None and not settings.has_identity:
            raise SettingsError(f"{prefix}_CLIENT_CA needs {prefix}_CERT and {prefix}_KEY (a listener's identity)")
        return settings


def insecure_plaintext_from_env(environ: Mapping[str, str], tls: TlsSettings | None) -> bool:
    """``STRONGROOM_INSECURE_PLAINTEXT``; refused together with TLS settings (they contradict)."""
    insecure = env_bool(environ, INSECURE_PLAINTEXT_ENV, False)
    if insecure and tls is not None:
        raise SettingsError(f"{INSECURE_PLAINTEXT_ENV}=1 contradicts the STRONGROOM_TLS_* settings; set only one")
    return insecure


@dataclass(frozen=True, slots=True)
class BackendTls:
    """TLS towards one backend (PostgreSQL, Kafka): off by default (today's behaviour).

    Environment for ``prefix`` (``STRONGROOM_PG_TLS``, ``STRONGROOM_KAFKA_TLS``): ``<prefix>=1``
    turns TLS on with the system roots; ``<prefix>_CA`` (which implies on) names the CA bundle;
    ``<prefix>_CERT`` and ``<prefix>_KEY`` a client certificate (certificate authentication).
    """

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], prefix: str) -> BackendTls:
        ca, cert, key = (_path(environ, f"{prefix}_{n}") for n in ("CA", "CERT", "KEY"))
        implied = any(p is not None for p in (ca, cert, key))
        enabled = env_bool(environ, prefix, implied)
        if implied and not enabled:
            raise SettingsError(f"{prefix}=0 contradicts {prefix}_CA/_CERT/_KEY")
        if (cert is None) != (key is None):
            raise SettingsError(f"{prefix}_CERT and {prefix}_KEY go together")
        return cls(enabled=enabled, ca_file=ca, cert_file=cert, key_file=key)


KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
"""The SASL mechanisms accepted for Kafka; the first is the default (ADR 0029)."""


@dataclass(frozen=True, slots=True)
class KafkaSasl:
    """SASL/SCRAM credentials of the Kafka clients (ADR 0029); they always travel over TLS.

    Environment: ``STRONGROOM_KAFKA_SASL_USERNAME`` and either ``STRONGROOM_KAFKA_SASL_PASSWORD`` or
    ``STRONGROOM_KAFKA_SASL_PASSWORD_FILE`` (a mounted Secret; one trailing newline is ignored);
    ``STRONGROOM_KAFKA_SASL_MECHANISM`` is ``SCRAM-SHA-512`` (default) or ``SCRAM-SHA-256``. Any of
    them turns SASL on, and SASL needs Kafka TLS (``STRONGROOM_KAFKA_TLS*``): SASL_PLAINTEXT is
    refused, with no escape hatch.
    """

    username: str
    password: str = field(repr=False)
    mechanism: str = KAFKA_SASL_MECHANISMS[0]

    def __post_init__(self) -> None:
        if self.mechanism not in KAFKA_SASL_MECHANISMS:
            raise SettingsError(
                f"STRONGROOM_KAFKA_SASL_MECHANISM must be one of {', '.join(KAFKA_SASL_MECHANISMS)}, "
                f"got {self.mechanism!r}"
            )
        if not self.username or not self.password:
            raise SettingsError("Kafka SASL needs a username and a password")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], tls: BackendTls) -> KafkaSasl | None:
        """None when no ``STRONGROOM_KAFKA_SASL_*`` variable is set; SettingsError when incomplete,
        contradictory, or configured without Kafka TLS."""
        prefix = "STRONGROOM_KAFKA_SASL"
        names = [f"{prefix}_{n}" for n in ("MECHANISM", "USERNAME", "PASSWORD", "PASSWORD_FILE")]
        if not any(environ.get(name) for name in names):
            return None
        if not tls.enabled:
            raise PlaintextRefused(
                f"Kafka SASL without TLS (SASL_PLAINTEXT) is refused: set STRONGROOM_KAFKA_TLS=1 or "
                f"STRONGROOM_KAFKA_TLS_CA together with the {prefix}_* settings"
            )
        password, password_file = environ.get(f"{prefix}_PASSWORD", ""), _path(environ, f"{prefix}_PASSWORD_FILE")
        if password and password_file is not None:
            raise SettingsError(f"set {prefix}_PASSWORD or {prefix}_PASSWORD_FILE, not both")
        if password_file is not None:
            try:
                password = password_file.read_text("utf-8").removesuffix("\n").removesuffix("\r")
            except OSError as exc:
                raise SettingsError(f"{prefix}_PASSWORD_FILE={password_file}: {exc.strerror or exc}") from None
        if not password:
            raise SettingsError(f"Kafka SASL needs {prefix}_PASSWORD or {prefix}_PASSWORD_FILE")
        return cls(
            username=env_str(environ, f"{prefix}_USERNAME"),
            password=password,
            mechanism=env_str(environ, f"{prefix}_MECHANISM", KAFKA_SASL_MECHANISMS[0]).strip().upper(),
        )


@dataclass(frozen=True, slots=True)
class S3Settings:
    endpoint: str
    access_key: str
    secret_key: str
    secure: bool
    bucket: str
    region: str
    ca_file: Path | None = None
    """CA bundle verifying the endpoint's certificate (None: the system roots); needs ``secure``."""


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """``STRONGROOM_OIDC_ISSUER``, ``_AUDIENCE``, ``_JWKS`` (file path or https address), ``_ROLES_CLAIM``."""

    issuer: str
    audience: str
    jwks: str
    roles_claim: str = "strongroom_roles"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OidcSettings | None:
        """None when OIDC is not configured (no issuer); a SettingsError when half-configured."""
        issuer = environ.get("STRONGROOM_OIDC_ISSUER", "")
        if not issuer:
            return None
        jwks = env_str(environ, "STRONGROOM_OIDC_JWKS")
        if "://" in jwks:
            parts = urlsplit(jwks)
            loopback = parts.hostname in {"127.0.0.1", "localhost", "::1"}
            if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
                raise SettingsError("STRONGROOM_OIDC_JWKS must be a file path or an https address")
        return cls(
            issuer=issuer,
            audience=env_str(environ, "STRONGROOM_OIDC_AUDIENCE"),
            jwks=jwks,
            roles_claim=env_str(environ, "STRONGROOM_OIDC_ROLES_CLAIM", "strongroom_roles"),
        )


@dataclass(frozen=True, slots=True)
class PlatformSettings:
    """Connections every service needs.

    Environment:
        STRONGROOM_PG_DSN: PostgreSQL DSN of this service's own login role (``strongroom_<service>``;
            never a superuser nor the schema's owner: the service refuses those; ADR 0031).
        STRONGROOM_PG_MIGRATE_DSN: optional DSN of the migration owner (owns the schemas, may create
            roles); given, the service migrates its schema, roles and grants before serving. Unset, the
            schema must already be migrated (``strongroom-admin migrate``).
        STRONGROOM_KAFKA_BOOTSTRAP: host:port of a Kafka-compatible broker.
        STRONGROOM_KAFKA_IDEMPOTENT: enable producer idempotence (default on; off for Tansu).
        STRONGROOM_OBJECT_STORE: "s3" (default) or "file:<directory>" (standalone mode).
        STRONGROOM_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY, _SECURE, _BUCKET, _REGION: S3 access;
            STRONGROOM_S3_TLS_CA: CA bundle of the endpoint (implies _SECURE).
        STRONGROOM_TLS_CERT, _KEY, _CA, _CLIENT_CA: this process's gRPC TLS (:class:`TlsSettings`).
        STRONGROOM_INSECURE_PLAINTEXT: "1" lets gRPC listeners and channels run without TLS
            (development and tests only); without it and without TLS settings they are refused.
        STRONGROOM_PG_TLS, _CA, _CERT, _KEY and STRONGROOM_KAFKA_TLS, _CA, _CERT, _KEY: TLS to
            PostgreSQL and Kafka (:class:`BackendTls`; off by default).
        STRONGROOM_KAFKA_SASL_MECHANISM, _USERNAME, _PASSWORD or _PASSWORD_FILE: SCRAM credentials
            of the Kafka clients (:class:`KafkaSasl`; needs Kafka TLS; off by default).
        STRONGROOM_INTERNAL_LISTEN: host:port of the internal listener, where other Strongroom
            services call this one with their service certificates (mutual TLS; needs
            STRONGROOM_TLS_CLIENT_CA); unset, no internal listener (ADR 0024).
        STRONGROOM_OIDC_ISSUER, _AUDIENCE, _JWKS, _ROLES_CLAIM: operators' OIDC tokens (:class:`OidcSettings`).
        STRONGROOM_OTEL: "none" (default), "console", "otlp" or "file:<dir>"; with
            STRONGROOM_METRICS_LISTEN, STRONGROOM_LOG_FORMAT and STRONGROOM_LOG_LEVEL read by the
            process's entry point (``strongroom_telemetry.config``, ADR 0039).
        STRONGROOM_KAFKA_PARTITIONS: partitions of the topics a consumer creates (default: the
            registry's, 12 in production; tests and standalone mode use a small count; ADR 0050).
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
    tls: TlsSettings | None = None
    insecure_plaintext: bool = False
    pg_tls: BackendTls = BackendTls()
    kafka_tls: BackendTls = BackendTls()
    kafka_sasl: KafkaSasl | None = None
    internal_listen: str | None = None
    oidc: OidcSettings | None = None
    pg_migrate_dsn: str | None = None
    kafka_partitions: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PlatformSettings:
        object_store = env_str(environ, "STRONGROOM_OBJECT_STORE", "s3")
        s3 = None
        if object_store == "s3":
            s3_ca = _path(environ, "STRONGROOM_S3_TLS_CA")
            secure = env_bool(environ, "STRONGROOM_S3_SECURE", s3_ca is not None)
            if s3_ca is not None and not secure:
                raise SettingsError("STRONGROOM_S3_TLS_CA contradicts STRONGROOM_S3_SECURE=0")
            s3 = S3Settings(
                endpoint=env_str(environ, "STRONGROOM_S3_ENDPOINT"),
                access_key=env_str(environ, "STRONGROOM_S3_ACCESS_KEY"),
                secret_key=env_str(environ, "STRONGROOM_S3_SECRET_KEY"),
                secure=secure,
                bucket=env_str(environ, "STRONGROOM_S3_BUCKET", "strongroom"),
                region=env_str(environ, "STRONGROOM_S3_REGION", "us-east-1"),
                ca_file=s3_ca,
            )
        elif not object_store.startswith("file:"):
            raise SettingsError(f"STRONGROOM_OBJECT_STORE must be 's3' or 'file:<dir>', got {object_store!r}")
        tls = TlsSettings.from_env(environ)
        try:
            otel = parse_exporter(env_str(environ, "STRONGROOM_OTEL", "none"))
        except TelemetrySettingsError as exc:
            raise SettingsError(str(exc)) from None
        kafka_tls = BackendTls.from_env(environ, "STRONGROOM_KAFKA_TLS")
        settings = cls(
            pg_dsn=env_str(environ, "STRONGROOM_PG_DSN"),
            kafka_bootstrap=env_str(environ, "STRONGROOM_KAFKA_BOOTSTRAP"),
            kafka_idempotent=env_bool(environ, "STRONGROOM_KAFKA_IDEMPOTENT", True),
            object_store=object_store,
            s3=s3,
            otel=otel,
            outbox_replay=env_bool(environ, "STRONGROOM_OUTBOX_REPLAY", False),
            tls=tls,
            insecure_plaintext=insecure_plaintext_from_env(environ, tls),
            pg_tls=BackendTls.from_env(environ, "STRONGROOM_PG_TLS"),
            kafka_tls=kafka_tls,
            kafka_sasl=KafkaSasl.from_env(environ, kafka_tls),
            internal_listen=environ.get("STRONGROOM_INTERNAL_LISTEN") or None,
            oidc=OidcSettings.from_env(environ),
            pg_migrate_dsn=environ.get("STRONGROOM_PG_MIGRATE_DSN") or None,
            kafka_partitions=_partitions(environ),
        )
        if not settings.insecure_plaintext and (tls is None or not tls.has_identity):
            # Refused here, before anything connects, rather than when the listener opens.
            raise PlaintextRefused(
                f"no TLS certificate (set STRONGROOM_TLS_CERT and STRONGROOM_TLS_KEY); "
                f"plaintext needs {INSECURE_PLAINTEXT_ENV}=1"
            )
        return settings
