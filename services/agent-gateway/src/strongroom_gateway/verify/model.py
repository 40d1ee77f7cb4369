"""What a verification is and what it found (persisted by ``ports.VerifyTx``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

Scope = Literal["point", "instance", "account", "sample"]
State = Literal["queued", "running", "clean", "damaged", "failed"]
FINISHED: frozenset[State] = frozenset({"clean", "damaged", "failed"})

# Damaged files listed per verification (all are counted); reasons and paths as restores bound them (ADR 0030).
MAX_LISTED_FILES = 1000
MAX_LISTED_PACKS = 1000
MAX_PATH_CHARS = 4096
MAX_REASON_CHARS = 8192


@dataclass(frozen=True, slots=True)
class Progress:
    points_total: int = 0
    points_done: int = 0
    packs_checked: int = 0
    bytes_read: int = 0
    damaged_files: int = 0
    damaged_packs: int = 0


@dataclass(frozen=True, slots=True)
class Verification:
    verification_id: str
    account_id: str
    scope: Scope
    target_id: str
    instance_id: str
    state: State
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    progress: Progress = Progress()
    error: str = ""


@dataclass(frozen=True, slots=True)
class DamagedFile:
    point_id: str
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class DamagedPack:
    pack_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class PointCheck:
    """The outcome of checking one point: ``full`` when every pack it references was read."""

    point_id: str
    account_id: str
    instance_id: str
    point_created_at: dt.datetime
    checked_at: dt.datetime
    full: bool
    damaged_files: int
    verification_id: str


@dataclass(frozen=True, slots=True)
class Recoverability:
    instance_id: str
    last_verified_point_id: str
    last_verified_point_created_at: dt.datetime | None
    last_verified_at: dt.datetime | None
    damaged_files: int
    damaged_points: int
    last_verification_id: str
