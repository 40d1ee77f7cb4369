"""Settings of the catalog process; the only module reading the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from strongroom_platform.settings import PlatformSettings, SettingsError, env_int, env_str


@dataclass(frozen=True, slots=True)
class Settings:
    """Environment:
    STRONGROOM_PG_DSN, STRONGROOM_KAFKA_*, STRONGROOM_OBJECT_STORE, STRONGROOM_S3_*: see PlatformSettings.
    STRONGROOM_GRPC_LISTEN: host:port the gRPC API listens on (default 127.0.0.1:0, any free port).
    STRONGROOM_GATEWAY_ADDR: the agent gateway, which serves the decrypted manifests the catalog
        indexes (ManifestService, ADR 0016); STRONGROOM_GATEWAY_INTERNAL_ADDR overrides it when the
        gateway serves its internal API on a separate listener. Unset, manifests are read from the
        object store, which works only for plaintext manifests (tests, points from before encryption).
    STRONGROOM_CATALOG_RETENTION_INTERVAL: seconds between retention runs (default 600). The seed
        says turning "keep at least one backup version" off takes effect within one hour, so
        the default must stay at most 3600 (a test holds it to that).
    """

    platform: PlatformSettings
    grpc_listen: str
    retention_interval: int
    # None only when constructed in code (tests inject the manifest source).
    gateway_addr: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        interval = env_int(environ, "STRONGROOM_CATALOG_RETENTION_INTERVAL", 600)
        if interval <= 0:
            raise SettingsError(f"STRONGROOM_CATALOG_RETENTION_INTERVAL must be positive, got {interval}")
        return cls(
            platform=PlatformSettings.from_env(environ),
            grpc_listen=env_str(environ, "STRONGROOM_GRPC_LISTEN", "127.0.0.1:0"),
            retention_interval=interval,
            gateway_addr=environ.get("STRONGROOM_GATEWAY_INTERNAL_ADDR")
            or environ.get("STRONGROOM_GATEWAY_ADDR")
            or None,
        )
