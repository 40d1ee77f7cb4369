"""Settings of the billing process; the only place that reads its environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from strongroom_platform.settings import env_bool, env_str


@dataclass(frozen=True, slots=True)
class Settings:
    """Environment: STRONGROOM_PG_DSN, STRONGROOM_KAFKA_BOOTSTRAP (both required),
    STRONGROOM_KAFKA_IDEMPOTENT (default on), STRONGROOM_GRPC_LISTEN (default 127.0.0.1:0).
    """

    pg_dsn: str
    kafka_bootstrap: str
    kafka_idempotent: bool = True
    grpc_listen: str = "127.0.0.1:0"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            pg_dsn=env_str(environ, "STRONGROOM_PG_DSN"),
            kafka_bootstrap=env_str(environ, "STRONGROOM_KAFKA_BOOTSTRAP"),
            kafka_idempotent=env_bool(environ, "STRONGROOM_KAFKA_IDEMPOTENT", True),
            grpc_listen=env_str(environ, "STRONGROOM_GRPC_LISTEN", "127.0.0.1:0"),
        )
