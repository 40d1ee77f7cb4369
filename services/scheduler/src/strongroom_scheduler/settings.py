"""Settings of the scheduler process; the only place that reads its environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from strongroom_platform.settings import SettingsError, env_bool, env_str


@dataclass(frozen=True, slots=True)
class Settings:
    """Environment:
    STRONGROOM_PG_DSN (required), STRONGROOM_KAFKA_BOOTSTRAP (required),
    STRONGROOM_KAFKA_IDEMPOTENT (default on), STRONGROOM_OUTBOX_REPLAY (standalone),
    STRONGROOM_GRPC_LISTEN (default 127.0.0.1:0),
    STRONGROOM_SCHEDULE_INTERVAL (seconds between schedule passes, default 30).
    """

    pg_dsn: str
    kafka_bootstrap: str
    kafka_idempotent: bool = True
    outbox_replay: bool = False
    grpc_listen: str = "127.0.0.1:0"
    schedule_interval: float = 30.0

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
        return cls(
            pg_dsn=env_str(environ, "STRONGROOM_PG_DSN"),
            kafka_bootstrap=env_str(environ, "STRONGROOM_KAFKA_BOOTSTRAP"),
            kafka_idempotent=env_bool(environ, "STRONGROOM_KAFKA_IDEMPOTENT", True),
            outbox_replay=env_bool(environ, "STRONGROOM_OUTBOX_REPLAY", False),
            grpc_listen=env_str(environ, "STRONGROOM_GRPC_LISTEN", "127.0.0.1:0"),
            schedule_interval=interval,
        )
