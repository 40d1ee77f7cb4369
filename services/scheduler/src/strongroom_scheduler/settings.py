"""Settings of the scheduler process; the only place that reads its environment."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from strongroom_platform.settings import PlatformSettings, SettingsError, env_int, env_str
from strongroom_platform.zones import DEFAULT_ZONE, zone_from_env

from strongroom_scheduler.alerts.delivery import DeliveryPolicy
from strongroom_scheduler.alerts.mail import SECURITY_MODES, SmtpSettings
from strongroom_scheduler.alerts.prune import PrunePolicy
from strongroom_scheduler.alerts.webhook import WebhookPolicy, parse_allow_list
from strongroom_scheduler.audit_retention import MIN_AUDIT_KEEP, AuditRetention
from strongroom_scheduler.schedule import DEFAULT_WINDOW_MINUTES, Admission


def _seconds(environ: Mapping[str, str], name: str, default: str) -> float:
    raw = env_str(environ, name, default)
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {raw!r}")
    return value


def _admission(environ: Mapping[str, str]) -> Admission:
    cap = env_int(environ, "STRONGROOM_MAX_CONCURRENT_BACKUPS", 0)
    if cap < 0:
        raise SettingsError(f"STRONGROOM_MAX_CONCURRENT_BACKUPS must be 0 (no cap) or more, got {cap}")
    window = _seconds(environ, "STRONGROOM_ADMISSION_WINDOW", str(DEFAULT_WINDOW_MINUTES * 60))
    return Admission(max_concurrent=cap, window=dt.timedelta(seconds=window))


def _smtp(environ: Mapping[str, str]) -> SmtpSettings | None:
    host = environ.get("STRONGROOM_SMTP_HOST", "").strip()
    if not host:
        return None
    security = env_str(environ, "STRONGROOM_SMTP_SECURITY", "starttls").strip().lower()
    if security not in SECURITY_MODES:
        raise SettingsError(f"STRONGROOM_SMTP_SECURITY must be one of {', '.join(SECURITY_MODES)}, got {security!r}")
    password = environ.get("STRONGROOM_SMTP_PASSWORD", "")
    password_file = environ.get("STRONGROOM_SMTP_PASSWORD_FILE", "").strip()
    if password and password_file:
        raise SettingsError("set STRONGROOM_SMTP_PASSWORD or STRONGROOM_SMTP_PASSWORD_FILE, not both")
    if password_file:
        try:
            password = Path(password_file).read_text().removesuffix("\n")
        except OSError as exc:
            raise SettingsError(f"STRONGROOM_SMTP_PASSWORD_FILE={password_file}: {exc.strerror or exc}") from None
    username = environ.get("STRONGROOM_SMTP_USERNAME", "").strip()
    if password and security == "none":
        raise SettingsError("an SMTP password needs STRONGROOM_SMTP_SECURITY starttls or tls, not none")
    port = env_int(environ, "STRONGROOM_SMTP_PORT", 465 if security == "tls" else 587)
    if not 0 < port < 65536:
        raise SettingsError(f"STRONGROOM_SMTP_PORT must be 1-65535, got {port}")
    return SmtpSettings(
        host=host,
        port=port,
        sender=env_str(environ, "STRONGROOM_SMTP_FROM", "strongroom@localhost"),
        username=username,
        password=password,
        security=security,
        ca_file=environ.get("STRONGROOM_SMTP_CA", "").strip(),
    )


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """The alert pipeline (ADR 0037).

    STRONGROOM_ALERT_OPERATOR_ACCOUNT: the account whose messages and subscriptions also receive
    platform alerts (dead-lettered records); unset: those are logged only.
    STRONGROOM_ALERT_WEBHOOK_ALLOW: comma-separated non-public networks webhooks may reach
    (default none: only public addresses); STRONGROOM_ALERT_WEBHOOK_TIMEOUT (seconds, default 10).
    STRONGROOM_ALERT_RETRY_INITIAL / _RETRY_MAX (seconds, default 10 and 3600) and
    STRONGROOM_ALERT_MAX_ATTEMPTS (default 8): the backoff of failed deliveries and when they are
    dead-lettered. STRONGROOM_ALERT_POLL (seconds between delivery passes, default 2).
    STRONGROOM_SMTP_HOST (unset: no email alerts), _PORT, _FROM, _USERNAME, _PASSWORD or
    _PASSWORD_FILE, _SECURITY (starttls, tls or none), _CA.
    STRONGROOM_ALERT_KEEP_DAYS (default 90, at least 1): finished deliveries and read messages
    older than this are deleted, hourly, in batches (unread messages are kept).
    """

    operator_account: str = ""
    webhook: WebhookPolicy = field(default_factory=WebhookPolicy)
    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    poll_interval: float = 2.0
    smtp: SmtpSettings | None = None
    prune: PrunePolicy = field(default_factory=PrunePolicy)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AlertSettings:
        try:
            allow = parse_allow_list(environ.get("STRONGROOM_ALERT_WEBHOOK_ALLOW", ""))
        except ValueError as exc:
            raise SettingsError(f"STRONGROOM_ALERT_WEBHOOK_ALLOW: {exc}") from None
        attempts = env_int(environ, "STRONGROOM_ALERT_MAX_ATTEMPTS", 8)
        initial = _seconds(environ, "STRONGROOM_ALERT_RETRY_INITIAL", "10")
        maximum = _seconds(environ, "STRONGROOM_ALERT_RETRY_MAX", "3600")
        if attempts < 1 or maximum < initial:
            raise SettingsError(
                "STRONGROOM_ALERT_MAX_ATTEMPTS must be at least 1 and STRONGROOM_ALERT_RETRY_MAX at least "
                "STRONGROOM_ALERT_RETRY_INITIAL"
            )
        timeout = _seconds(environ, "STRONGROOM_ALERT_WEBHOOK_TIMEOUT", "10")
        keep_days = env_int(environ, "STRONGROOM_ALERT_KEEP_DAYS", 90)
        if not 1 <= keep_days <= 36500:
            raise SettingsError(f"STRONGROOM_ALERT_KEEP_DAYS must be between 1 and 36500, got {keep_days}")
        return cls(
            operator_account=environ.get("STRONGROOM_ALERT_OPERATOR_ACCOUNT", "").strip(),
            webhook=WebhookPolicy(allow=allow, timeout=timeout),
            # a claimed delivery's lease outlives any attempt (the SMTP timeout is 30 s)
            delivery=DeliveryPolicy(
                initial=initial, maximum=maximum, max_attempts=attempts, lease=max(120.0, 4 * timeout)
            ),
            poll_interval=_seconds(environ, "STRONGROOM_ALERT_POLL", "2"),
            smtp=_smtp(environ),
            prune=PrunePolicy(keep=dt.timedelta(days=keep_days)),
        )


@dataclass(frozen=True, slots=True)
class Settings:
    """Environment:
    STRONGROOM_PG_DSN, STRONGROOM_KAFKA_*, STRONGROOM_OUTBOX_REPLAY, ...: see PlatformSettings.
    STRONGROOM_GRPC_LISTEN (default 127.0.0.1:0),
    STRONGROOM_SCHEDULE_INTERVAL (seconds between schedule passes, default 30).
    STRONGROOM_PREPARATION_TIMEOUT: seconds an activated instance's agent has to enroll before the
    instance is PREPARATION_FAILED (default 1800, the seed's "typically within 5 minutes" with margin).
    STRONGROOM_ZONE: the zone whose midnights daily start times count from (default UTC+8; an
    offset such as UTC+8 or an IANA name such as Asia/Shanghai).
    STRONGROOM_MAX_CONCURRENT_BACKUPS: backups of the whole fleet running at once (default 0: no cap);
    STRONGROOM_ADMISSION_WINDOW: seconds a due backup may wait for a free slot before it is skipped
    and reported (default 21600, the seed's six-hour start window). ADR 0053.
    STRONGROOM_AUDIT_KEEP_DAYS: days the audit trail is kept before it is pruned, hourly, by the
    trusted time (default 400, at least 90; ADR 0057).
    The alert pipeline's: see AlertSettings.
    """

    platform: PlatformSettings
    grpc_listen: str = "127.0.0.1:0"
    schedule_interval: float = 30.0
    zone: dt.tzinfo = DEFAULT_ZONE
    preparation_timeout: dt.timedelta = dt.timedelta(minutes=30)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    admission: Admission = field(default_factory=Admission)
    audit_retention: AuditRetention = field(default_factory=AuditRetention)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        raw_interval = env_str(environ, "STRONGROOM_SCHEDULE_INTERVAL", "30")
        try:
            interval = float(raw_interval)
        except ValueError:
            raise SettingsError(
                f"STRONGROOM_SCHEDULE_INTERVAL must be a number of seconds, got {raw_interval!r}"
            ) from None
        if interval <= 0:
            raise SettingsError(f"STRONGROOM_SCHEDULE_INTERVAL must be positive, got {raw_interval!r}")
        raw_timeout = env_str(environ, "STRONGROOM_PREPARATION_TIMEOUT", "1800")
        try:
            timeout = float(raw_timeout)
        except ValueError:
            raise SettingsError(
                f"STRONGROOM_PREPARATION_TIMEOUT must be a number of seconds, got {raw_timeout!r}"
            ) from None
        if not 0 < timeout <= 7 * 86400:
            raise SettingsError(
                f"STRONGROOM_PREPARATION_TIMEOUT must be between 0 and 604800 seconds, got {raw_timeout!r}"
            )
        return cls(
            platform=PlatformSettings.from_env(environ),
            grpc_listen=env_str(environ, "STRONGROOM_GRPC_LISTEN", "127.0.0.1:0"),
            schedule_interval=interval,
            zone=zone_from_env(environ),
            preparation_timeout=dt.timedelta(seconds=timeout),
            alerts=AlertSettings.from_env(environ),
            admission=_admission(environ),
            audit_retention=_audit_retention(environ),
        )


def _audit_retention(environ: Mapping[str, str]) -> AuditRetention:
    keep_days = env_int(environ, "STRONGROOM_AUDIT_KEEP_DAYS", 400)
    if not MIN_AUDIT_KEEP.days <= keep_days <= 36500:
        raise SettingsError(
            f"STRONGROOM_AUDIT_KEEP_DAYS must be between {MIN_AUDIT_KEEP.days} and 36500, got {keep_days}"
        )
    return AuditRetention(keep=dt.timedelta(days=keep_days))
