"""Settings of the scheduler process; the only place that reads its environment."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from strongroom_platform.settings import PlatformSettings, SettingsError, env_str
from strongroom_platform.zones import DEFAULT_ZONE, zone_from_env


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
    """

    platform: PlatformSettings
    grpc_listen: str = "127.0.0.1:0"
    schedule_interval: float = 30.0
    zone: dt.tzinfo = DEFAULT_ZONE
    preparation_timeout: dt.timedelta = dt.timedelta(minutes=30)

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
        )
