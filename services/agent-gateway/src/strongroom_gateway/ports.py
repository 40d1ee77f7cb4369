"""The gateway's persistence port: one unit of work over schema ``gateway``.

Every state change happens inside ``async with store.transaction() as tx``;
events produced by the change are added with ``tx.enqueue`` and consumed event
ids are claimed with ``tx.claim_event`` in that same transaction, so state,
outgoing events and the inbox commit or roll back together.

Adapters: ``repository.PgGatewayStore`` (asyncpg, transactional outbox/inbox)
and ``testing.InMemoryGatewayStore``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

from strongroom_platform.db import InboxOutboxTx

from strongroom_gateway.agent_cert_store import CertificateTx
from strongroom_gateway.gc.moves_store import MoveTx
from strongroom_gateway.gc.point_refs import PointRefsTx
from strongroom_gateway.gc.repack_store import RepackTx
from strongroom_gateway.gc.store import GcTx

JobKind = Literal["backup", "restore"]
# queued: waiting for the agent; delivered: sent on a stream; running: the agent
# reported on it; finished: final (complete, failed, canceled...).
JobState = Literal["queued", "delivered", "running", "finished"]


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    chunk_id_key: bytes
    chunker_seed: int


@dataclass(frozen=True, slots=True)
class AccountDataKey:
    """An account's data key as stored: wrapped by the master key ``master_key_id`` (keys.py)."""

    account_id: str
    master_key_id: str
    wrapped_key: bytes
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Instance:
    instance_id: str
    account_id: str
    token_sha256: str | None
    token_expires_at: dt.datetime | None
    credential_sha256: str | None
    enrolled_at: dt.datetime | None
    revoked: bool
    hostname: str
    capacity_bytes: int
    # From instance-activated (migration 9), for the disaster-recovery record (ADR 0032).
    region: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    instance_id: str
    account_id: str
    kind: JobKind
    # Serialized strongroom.agent.v1.AgentCommand (RunBackup without repository
    # parameters, which are filled in at delivery; or RunRestore).
    command: bytes
    state: JobState
    cancel_requested: bool
    created_at: dt.datetime
    point_id: str | None = None
    version_id: str | None = None
    version_created_at: dt.datetime | None = None
    # A scheduled backup's start window closes here: held for a free backup slot until then, it is
    # skipped (ADR 0053). None: never skipped ("back up now", restores).
    start_before: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    chunk_id: bytes
    pack_id: str
    object_key: str
    offset: int
    length: int
    raw_length: int
    compression: int
    # Format version of the pack holding the chunk (docs/formats/pack.md): 2 is encrypted.
    pack_format: int = 1
    # Object store version of the pack (ADR 0025); None for packs recorded before versions were: read the latest.
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class Pack:
    pack_id: str
    account_id: str
    object_key: str
    size: int
    created_at: dt.datetime
    retain_until: dt.datetime
    format_version: int = 1
    # Object store version id the pack was written as (ADR 0025); None: recorded before, read the latest.
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class Point:
    point_id: str
    account_id: str
    instance_id: str
    job_id: str
    version_id: str
    mount_point: str
    # Serialized strongroom.common.v1.Filesystem.
    filesystem: bytes
    manifest_key: str
    file_count: int
    total_bytes: int
    created_at: dt.datetime
    retain_until: dt.datetime
    # Object store version id of the manifest (ADR 0025); None: recorded before, read the latest.
    manifest_version_id: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceFilesystem:
    """A filesystem of an instance: approved (recorded at enrollment, or by an operator) or pending approval."""

    instance_id: str
    mount_point: str
    # Serialized strongroom.common.v1.Filesystem, as the agent first reported it.
    filesystem: bytes
    approved: bool
    first_seen_at: dt.datetime
    approved_at: dt.datetime | None = None


class GatewayTx(InboxOutboxTx, CertificateTx, GcTx, RepackTx, MoveTx, PointRefsTx, Protocol):
    """Reads and writes inside one transaction."""

    async def claim_events(self, consumer: str, event_ids: Sequence[str]) -> set[str]:
        """``claim_event`` of a batch in one go: the ids newly claimed (an id given twice is claimed once)."""
        ...

    async def ensure_account(self, account: Account) -> Account:
        """Insert the account unless it exists; return the stored one (its key never changes)."""
        ...

    async def get_account(self, account_id: str) -> Account | None: ...

    async def get_data_key(self, account_id: str) -> AccountDataKey | None: ...

    async def ensure_data_key(self, key: AccountDataKey) -> AccountDataKey:
        """Store the account's wrapped data key unless it has one; return the stored one (first writer wins)."""
        ...

    async def rewrap_data_key(self, account_id: str, old_master_key_id: str, key: AccountDataKey) -> None:
        """Replace the wrapping (same data key, new master key) if still wrapped by ``old_master_key_id``."""
        ...

    async def activate_instance(
        self,
        instance_id: str,
        account_id: str,
        token_sha256: str,
        token_expires_at: dt.datetime,
        *,
        region: str = "",
        name: str = "",
    ) -> None:
        """Create the instance or give it a new enrollment token; clears a revocation.

        Non-empty ``region`` and ``name`` replace the stored ones.
        """
        ...

    async def recover_instance(self, instance: Instance) -> bool:
        """Insert an instance rebuilt from the bucket (no token, no credential) unless it exists; True when added."""
        ...

    async def get_instance(self, instance_id: str, *, for_update: bool = False) -> Instance | None: ...

    async def get_instances(self, instance_ids: Sequence[str], *, for_update: bool = False) -> dict[str, Instance]:
        """The known ones of ``instance_ids`` by id (locked in id order with ``for_update``)."""
        ...

    async def find_instance_by_token(self, token_sha256: str) -> Instance | None:
        """The instance holding this unused token, locked for update."""
        ...

    async def enroll_instance(self, instance_id: str, credential_sha256: str, hostname: str, now: dt.datetime) -> None:
        """Store the credential hash and consume the token (single use)."""
        ...

    async def revoke_instance(self, instance_id: str) -> None:
        """Drop credential and token; the instance can no longer authenticate."""
        ...

    async def set_instance_capacity(self, instance_id: str, capacity_bytes: int, hostname: str) -> None: ...

    async def instance_filesystems(self, instance_id: str) -> list[InstanceFilesystem]:
        """The instance's recorded filesystems, approved and pending, by mount point."""
        ...

    async def add_instance_filesystem(self, filesystem: InstanceFilesystem) -> bool:
        """Record it unless the instance already has that mount point (then nothing changes); True when added."""
        ...

    async def approve_instance_filesystem(self, instance_id: str, mount_point: str, now: dt.datetime) -> bool:
        """Mark a pending filesystem approved; False when the instance has no such filesystem."""
        ...

    async def insert_job(self, job: Job) -> bool:
        """Insert unless a job with that id exists; True when inserted."""
        ...

    async def insert_jobs(self, jobs: Sequence[Job]) -> set[str]:
        """Insert, in order, those of ``jobs`` whose id is not known yet (the first of an id given
        twice); return the ids inserted. One statement."""
        ...

    async def get_job(self, job_id: str, *, for_update: bool = False) -> Job | None: ...

    async def update_job(self, job: Job) -> None:
        """Write state, cancel_requested, version_id and version_created_at of the job."""
        ...

    async def unfinished_jobs(self, instance_id: str) -> list[Job]:
        """Jobs of the instance not finished yet, in the order they were inserted."""
        ...

    async def unfinished_jobs_of(self, instance_ids: Sequence[str]) -> dict[str, list[Job]]:
        """``unfinished_jobs`` of several instances at once (an instance without any is absent)."""
        ...

    async def get_accounts(self, account_ids: Sequence[str]) -> dict[str, Account]:
        """The accounts among ``account_ids`` that exist."""
        ...

    async def mark_delivered(self, job_ids: Sequence[str]) -> None:
        """Set the jobs among ``job_ids`` that are still queued to delivered."""
        ...

    async def unfinished_job_keys(self, instance_ids: Sequence[str]) -> list[tuple[str, str, bool]]:
        """(instance id, job id, cancel requested) of the unfinished jobs of ``instance_ids``: what
        the gateway's safety sweep compares with what each session has sent (ADR 0050)."""
        ...

    async def notify_sessions(self, payloads: Sequence[str]) -> None:
        """Tell every gateway process, once this transaction commits, what sessions must learn
        (``session_events.payloads``; PostgreSQL ``NOTIFY``, one notification per payload)."""
        ...

    async def find_chunks(self, account_id: str, chunk_ids: Sequence[bytes]) -> dict[bytes, ChunkLocation]:
        """Locations of those of ``chunk_ids`` the account holds (never another account's)."""
        ...

    async def chunk_packs(self, account_id: str, chunk_ids: Sequence[bytes]) -> tuple[set[str], list[bytes]]:
        """The ids of the packs holding those of ``chunk_ids`` the account holds, and the ids it does not hold.

        The cheap form of :meth:`find_chunks` for a point's references: no locations.
        """
        ...

    async def insert_pack(self, pack: Pack, chunks: Sequence[ChunkLocation]) -> int:
        """Record a stored pack and its chunks; chunks already recorded stay. Returns rows inserted."""
        ...

    async def packs_locked_before(self, account_id: str, pack_ids: Sequence[str], when: dt.datetime) -> list[Pack]:
        """Those packs whose retention ends before ``when``."""
        ...

    async def set_pack_retention(self, pack_id: str, retain_until: dt.datetime) -> None: ...

    async def get_point(self, point_id: str) -> Point | None: ...

    async def find_point(self, job_id: str, mount_point: str) -> Point | None: ...

    async def insert_point(self, point: Point) -> None: ...


class GatewayStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[GatewayTx]:
        """Open a transaction; it commits when the block exits normally, else rolls back."""
        ...
