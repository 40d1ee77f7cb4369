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
    STRONGROOM_CATALOG_INTERNAL_ADDR (or STRONGROOM_CATALOG_ADDR): the catalog's internal listener,
        called with this service's certificate (required).
    STRONGROOM_SCHEDULER_INTERNAL_ADDR (or STRONGROOM_SCHEDULER_ADDR): the scheduler's internal
        listener, for the facts of restore targets (required).
    """

    platform: PlatformSettings
    grpc_listen: str
    catalog_addr: str
    scheduler_addr: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            platform=PlatformSettings.from_env(environ),
            grpc_listen=env_str(environ, "STRONGROOM_GRPC_LISTEN", "127.0.0.1:0"),
            catalog_addr=environ.get("STRONGROOM_CATALOG_INTERNAL_ADDR") or env_str(environ, "STRONGROOM_CATALOG_ADDR"),
            scheduler_addr=environ.get("STRONGROOM_SCHEDULER_INTERNAL_ADDR")
            or env_str(environ, "STRONGROOM_SCHEDULER_ADDR"),
        )
