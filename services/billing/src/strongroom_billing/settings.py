"""Settings of the billing process; the only place that reads its environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from strongroom_platform.settings import PlatformSettings, env_str


@dataclass(frozen=True, slots=True)
class Settings:
    """Environment:
    STRONGROOM_PG_DSN, STRONGROOM_KAFKA_*, ...: see PlatformSettings.
    STRONGROOM_GRPC_LISTEN: host:port the gRPC API listens on (default 127.0.0.1:0, any free port).
    """

    platform: PlatformSettings
    grpc_listen: str = "127.0.0.1:0"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            platform=PlatformSettings.from_env(environ),
            grpc_listen=env_str(environ, "STRONGROOM_GRPC_LISTEN", "127.0.0.1:0"),
        )
