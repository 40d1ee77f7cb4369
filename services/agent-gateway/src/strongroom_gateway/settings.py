"""Settings of the agent gateway, read once from the environment."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

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
    STRONGROOM_GATEWAY_MANIFEST_SEGMENTS: 1 (default) writes new points' manifests as format version 2,
        stored as segments shared across points (ADR 0065); 0 writes version 1. Every gateway reads both
        (version 1 forever); a gateway older than the version 2 readers must not read this bucket.
    STRONGROOM_GATEWAY_INTERNAL_LISTEN: host:port for the internal API (ManifestService, used by the
        catalog); unset, it is served on STRONGROOM_GRPC_LISTEN (one-machine setups only, ADR 0016).
    STRONGROOM_MASTER_KEY (base64 of 32 bytes) or STRONGROOM_MASTER_KEY_FILE (created 0600 if missing),
        STRONGROOM_MASTER_KEY_ID, STRONGROOM_MASTER_KEYS_RETIRED: the key wrapping the accounts' data
        keys; one of the first two is required (ADR 0015, ``keys.MasterKeyConfig``).
    Agent certificates (ADR 0028), all or none of the first three:
    STRONGROOM_GATEWAY_AGENT_MTLS_LISTEN: host:port of the agent mTLS listener (client CA = the
        agent CA); unset, agents keep their bearer credential on STRONGROOM_GRPC_LISTEN.
    STRONGROOM_GATEWAY_AGENT_CA_CERT, STRONGROOM_GATEWAY_AGENT_CA_KEY: the agent CA's certificate
        and EC key files (a mounted Secret).
    STRONGROOM_GATEWAY_AGENT_MTLS_ADDR: the address agents are told to call with their
        certificate (default ``:<bound port>``: the host they enrolled with).
    STRONGROOM_GATEWAY_AGENT_CERT_HOURS: agent certificate lifetime (default 168, 7 days).
    STRONGROOM_GATEWAY_AGENT_BEARER: ``all`` (default, the transition: older agents call everything
        with the bearer) or ``renew`` (the bearer only renews certificates).
    STRONGROOM_GATEWAY_AGENT_TRUST_BUNDLE: the CAs agents may trust for the gateway's certificate,
        sent with their SPKI pins on each renewal (default STRONGROOM_TLS_CA); append the next CA
        here before a rotation.
    Verification (ADR 0033):
    STRONGROOM_GATEWAY_VERIFY_MBPS: the most a verification reads, in MB/s (default 50; 0: no limit).
    STRONGROOM_GATEWAY_VERIFY_DAILY: 1 (default) queues the daily sample of the least recently
        checked packs; 0 runs only the verifications operators start.
    STRONGROOM_GATEWAY_VERIFY_COVER_DAYS: the sample reads every pack within this many days
        (default 28, at most 30: the retention period).
    STRONGROOM_GATEWAY_JOB_SWEEP_SECONDS: seconds between safety sweeps for jobs a session
        notification missed (default 60; ADR 0050).
    STRONGROOM_GATEWAY_MAX_RUNNING_BACKUPS: the most sessions of this replica running a backup at
        once; a backup job for another is held until one ends, oldest first (default 0: no cap;
        ADR 0053).
    Garbage collection (ADR 0041):
    STRONGROOM_S3_RECLAIM_ACCESS_KEY, STRONGROOM_S3_RECLAIM_SECRET_KEY: the reclaimer identity (ADR
        0035), the only one that deletes; with the S3 store and without them nothing is reclaimed.
    STRONGROOM_GATEWAY_GC_INTERVAL_SECONDS: seconds between collection runs (default 3600; 0: off).
    STRONGROOM_GATEWAY_GC_SAFETY_SECONDS: least age of an unreferenced pack before it is condemned,
        and of a condemnation before the pack is reclaimed (default 3600).
    Plus the platform connections (``PlatformSettings``).
    """

    platform: PlatformSettings
    grpc_listen: str = "127.0.0.1:0"
    pack_target_bytes: int = 16 << 20
    max_concurrent_writes: int = 8
    # Seconds between the verification worker's checks for queued verifications.
    job_poll_interval: float = 5.0
    # Seconds between safety sweeps for job commands a session notification missed (ADR 0050).
    job_sweep_interval: float = 60.0
    # Sessions of this replica running a backup at once (0: no cap; ADR 0053).
    max_running_backups: int = 0
    # Benchmarks only: deliver backups with no read-rate or core limit.
    unthrottled: bool = False
    manifest_segments: bool = True
    # None only when constructed in code (tests inject a keyring); from_env requires it.
    master_key: MasterKeyConfig | None = None
    internal_listen: str | None = None
    agent_mtls_listen: str | None = None
    agent_mtls_address: str = ""
    agent_ca_cert: Path | None = None
    agent_ca_key: Path | None = None
    agent_cert_validity: dt.timedelta = dt.timedelta(days=7)
    agent_bearer_data_calls: bool = True
    agent_trust_bundle: Path | None = None
    verify_bytes_per_second: int = 50_000_000
    verify_daily: bool = True
    verify_cover_days: int = 28
    reclaim_access_key: str = ""
    reclaim_secret_key: str = ""
    gc_interval_seconds: float = 3600.0
    gc_safety: dt.timedelta = dt.timedelta(hours=1)

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
            manifest_segments=env_bool(environ, "STRONGROOM_GATEWAY_MANIFEST_SEGMENTS", True),
            master_key=MasterKeyConfig.from_env(environ),
            internal_listen=environ.get("STRONGROOM_GATEWAY_INTERNAL_LISTEN") or None,
            **_agent_certificates(environ),
            **_verification(environ),
            **_collection(environ),
            job_sweep_interval=float(_job_sweep_seconds(environ)),
            max_running_backups=_max_running_backups(environ),
        )


def _max_running_backups(environ: Mapping[str, str]) -> int:
    limit = env_int(environ, "STRONGROOM_GATEWAY_MAX_RUNNING_BACKUPS", 0)
    if limit < 0:
        raise SettingsError("STRONGROOM_GATEWAY_MAX_RUNNING_BACKUPS must be 0 (no cap) or more")
    return limit


def _job_sweep_seconds(environ: Mapping[str, str]) -> int:
    seconds = env_int(environ, "STRONGROOM_GATEWAY_JOB_SWEEP_SECONDS", 60)
    if not 1 <= seconds <= 3600:
        raise SettingsError("STRONGROOM_GATEWAY_JOB_SWEEP_SECONDS must be between 1 and 3600")
    return seconds


class _Collection(TypedDict):
    reclaim_access_key: str
    reclaim_secret_key: str
    gc_interval_seconds: float
    gc_safety: dt.timedelta


def _collection(environ: Mapping[str, str]) -> _Collection:
    access = environ.get("STRONGROOM_S3_RECLAIM_ACCESS_KEY", "")
    secret = environ.get("STRONGROOM_S3_RECLAIM_SECRET_KEY", "")
    if bool(access) != bool(secret):
        raise SettingsError(
            "STRONGROOM_S3_RECLAIM_ACCESS_KEY and STRONGROOM_S3_RECLAIM_SECRET_KEY go together (the reclaimer)"
        )
    interval = env_int(environ, "STRONGROOM_GATEWAY_GC_INTERVAL_SECONDS", 3600)
    if not 0 <= interval <= 7 * 86400:
        raise SettingsError("STRONGROOM_GATEWAY_GC_INTERVAL_SECONDS must be between 0 (off) and 604800")
    safety = env_int(environ, "STRONGROOM_GATEWAY_GC_SAFETY_SECONDS", 3600)
    if not 0 <= safety <= 7 * 86400:
        raise SettingsError("STRONGROOM_GATEWAY_GC_SAFETY_SECONDS must be between 0 and 604800")
    return {
        "reclaim_access_key": access,
        "reclaim_secret_key": secret,
        "gc_interval_seconds": float(interval),
        "gc_safety": dt.timedelta(seconds=safety),
    }


class _Verification(TypedDict):
    verify_bytes_per_second: int
    verify_daily: bool
    verify_cover_days: int


def _verification(environ: Mapping[str, str]) -> _Verification:
    mbps = env_int(environ, "STRONGROOM_GATEWAY_VERIFY_MBPS", 50)
    if not 0 <= mbps <= 100_000:
        raise SettingsError("STRONGROOM_GATEWAY_VERIFY_MBPS must be between 0 (no limit) and 100000")
    days = env_int(environ, "STRONGROOM_GATEWAY_VERIFY_COVER_DAYS", 28)
    if not 1 <= days <= 30:
        raise SettingsError("STRONGROOM_GATEWAY_VERIFY_COVER_DAYS must be between 1 and 30 (the retention period)")
    return {
        "verify_bytes_per_second": mbps * 1_000_000,
        "verify_daily": env_bool(environ, "STRONGROOM_GATEWAY_VERIFY_DAILY", True),
        "verify_cover_days": days,
    }


class _AgentCertificates(TypedDict):
    agent_mtls_listen: str | None
    agent_mtls_address: str
    agent_ca_cert: Path | None
    agent_ca_key: Path | None
    agent_cert_validity: dt.timedelta
    agent_bearer_data_calls: bool
    agent_trust_bundle: Path | None


def _agent_certificates(environ: Mapping[str, str]) -> _AgentCertificates:
    listen = environ.get("STRONGROOM_GATEWAY_AGENT_MTLS_LISTEN") or None
    cert = environ.get("STRONGROOM_GATEWAY_AGENT_CA_CERT") or None
    key = environ.get("STRONGROOM_GATEWAY_AGENT_CA_KEY") or None
    if (listen is None) != (cert is None) or (cert is None) != (key is None):
        raise SettingsError(
            "STRONGROOM_GATEWAY_AGENT_MTLS_LISTEN, STRONGROOM_GATEWAY_AGENT_CA_CERT and "
            "STRONGROOM_GATEWAY_AGENT_CA_KEY go together (the agent mTLS listener and its CA)"
        )
    hours = env_int(environ, "STRONGROOM_GATEWAY_AGENT_CERT_HOURS", 168)
    if not 1 <= hours <= 24 * 90:
        raise SettingsError("STRONGROOM_GATEWAY_AGENT_CERT_HOURS must be between 1 and 2160")
    bearer = env_str(environ, "STRONGROOM_GATEWAY_AGENT_BEARER", "all")
    if bearer not in ("all", "renew"):
        raise SettingsError("STRONGROOM_GATEWAY_AGENT_BEARER must be 'all' or 'renew'")
    bundle = environ.get("STRONGROOM_GATEWAY_AGENT_TRUST_BUNDLE") or environ.get("STRONGROOM_TLS_CA") or None
    return {
        "agent_mtls_listen": listen,
        "agent_mtls_address": environ.get("STRONGROOM_GATEWAY_AGENT_MTLS_ADDR", ""),
        "agent_ca_cert": Path(cert) if cert else None,
        "agent_ca_key": Path(key) if key else None,
        "agent_cert_validity": dt.timedelta(hours=hours),
        "agent_bearer_data_calls": bearer == "all",
        "agent_trust_bundle": Path(bundle) if bundle else None,
    }
