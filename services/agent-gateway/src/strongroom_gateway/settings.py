"""Settings of the agent gateway, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from strongroom_platform.settings import PlatformSettings, SettingsError, env_bool, env_int, env_str

from strongroom_gateway.keys import MasterKeyConfig


@dataclass(frozen=True, slots=True)
class Settings:
    """Environment:
    STRONGROOM_GRPC_LISTEN: host:port to serve agents on (default 127.0.0.1:0).
    STRONGROOM_GATEWAY_PACK_BYTES: target pack size (default 16 MiB).
    STRONGROOM_GATEWAY_MAX_WRITES: concurrent object-store writes (default 8).
    STRONGROOM_GATEWAY_UNTHROTTLED: benchmarks only; when 1, backup jobs are delivered without
        the priority's read-rate and core limits (default 0).
    STRONGROOM_GATEWAY_INTERNAL_LISTEN: host:port for the internal API (ManifestService, used by the
        catalog); unset, it is served on STRONGROOM_GRPC_LISTEN (one-machine setups only, ADR 0016).
    STRONGROOM_MASTER_KEY (base64 of 32 bytes) or STRONGROOM_MASTER_KEY_FILE (created 0600 if missing),
        STRONGROOM_MASTER_KEY_ID, STRONGROOM_MASTER_KEYS_RETIRED: the key wrapping the accounts' data
        keys; one of the first two is required (ADR 0015, ``keys.MasterKeyConfig``).
    Plus the platform connections (``PlatformSettings``).
    """

    platform: PlatformSettings
    grpc_listen: str = "127.0.0.1:0"
    pack_target_bytes: int = 16 << 20
    max_concurrent_writes: int = 8
    # Seconds between checks for jobs queued by another gateway replica.
    job_poll_interval: float = 5.0
    # Benchmarks only: deliver backups with no read-rate or core limit.
    unthrottled: bool = False
    # None only when constructed in code (tests inject a keyring); from_env requires it.
    master_key: MasterKeyConfig | None = None
    internal_listen: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        pack_bytes = env_int(environ, "STRONGROOM_GATEWAY_PACK_BYTES", 16 << 20)
        if not 1 << 20 <= pack_bytes <= 1 << 30:
            raise SettingsError("STRONGROOM_GATEWAY_PACK_BYTES must be between 1 MiB and 1 GiB")
        writes = env_int(environ, "STRONGROOM_GATEWAY_MAX_WRITES", 8)
        if writes < 1:
            raise SettingsError("STRONGROOM_GATEWAY_MAX_WRITES must be at least 1")
        return cls(
            platform=PlatformSettings.from_env(environ),
            grpc_listen=env_str(environ, "STRONGROOM_GRPC_LISTEN", "127.0.0.1:0"),
            pack_target_bytes=pack_bytes,
            max_concurrent_writes=writes,
            unthrottled=env_bool(environ, "STRONGROOM_GATEWAY_UNTHROTTLED", False),
            master_key=MasterKeyConfig.from_env(environ),
            internal_listen=environ.get("STRONGROOM_GATEWAY_INTERNAL_LISTEN") or None,
        )
