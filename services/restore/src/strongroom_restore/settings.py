"""Settings of the restore process; the only module reading the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from strongroom_platform.settings import PlatformSettings, env_str


@dataclass(frozen=True, slots=True)
class Settings:
    """Environment:
    STRONGROOM_PG_DSN, STRONGROOM_KAFKA_*, STRONGROOM_OBJECT_STORE, STRONGROOM_S3_*: see PlatformSettings.
    STRONGROOM_GRPC_LISTEN: host:port the gRPC API listens on (default 127.0.0.1:0, any free port).
    STRONGROOM_CATALOG_ADDR: host:port of the catalog's gRPC API (required).
    """

    platform: PlatformSettings
    grpc_listen: str
    catalog_addr: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            platform=PlatformSettings.from_env(environ),
            grpc_listen=env_str(environ, "STRONGROOM_GRPC_LISTEN", "127.0.0.1:0"),
            catalog_addr=env_str(environ, "STRONGROOM_CATALOG_ADDR"),
        )
