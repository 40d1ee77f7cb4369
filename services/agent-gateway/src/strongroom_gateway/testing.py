"""In-memory fake of the gateway's store, for unit tests.

Transactions are serialized by a lock and roll back by restoring a snapshot,
so a handler that raises leaves no state, no outbox rows and no inbox claim
behind, as with PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from google.protobuf.message import Message
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.events import TOPIC_MESSAGES

from strongroom_gateway.agent_cert_store import AgentCertificate, MemoryCertificateTx
from strongroom_gateway.gc.moves_store import MemoryMoveTx
from strongroom_gateway.gc.point_refs import MemoryPointRefsTx
from strongroom_gateway.gc.repack_store import MemoryRepackTx
from strongroom_gateway.gc.store import MemoryGcState, MemoryGcTx
from strongroom_gateway.ports import (
    Account,
    AccountDataKey,
    ChunkLocation,
    Instance,
    InstanceFilesystem,
    Job,
    Pack,
    Point,
)


@dataclasses.dataclass
class _State:
    accounts: dict[str, Account] = dataclasses.field(default_factory=dict)
    data_keys: dict[str, AccountDataKey] = dataclasses.field(default_factory=dict)
    instances: dict[str, Instance] = dataclasses.field(default_factory=dict)
    jobs: dict[str, Job] = dataclasses.field(default_factory=dict)
    packs: dict[str, Pack] = dataclasses.field(default_factory=dict)
    chunks: dict[tuple[str, bytes], ChunkLocation] = dataclasses.field(default_factory=dict)
    points: dict[str, Point] = dataclasses.field(default_factory=dict)
    filesystems: dict[tuple[str, str], InstanceFilesystem] = dataclasses.field(default_factory=dict)
    processed: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    outbox: list[tuple[str, str, Message]] = dataclasses.field(default_factory=list)
    # Session notifications (``notify_sessions``) in commit order; no other process hears them.
    notifications: list[str] = dataclasses.field(default_factory=list)
    certificates: dict[str, AgentCertificate] = dataclasses.field(default_factory=dict)
    # point id -> (move epoch, chunk references per pack) recorded with it (migration 20).
    point_refs: dict[str, tuple[int, dict[str, int]]] = dataclasses.field(default_factory=dict)
    gc: MemoryGcState = dataclasses.field(default_factory=MemoryGcState)

    def copy(self) -> _State:
        return _State(
            **{f.name: type(v)(v) for f in dataclasses.fields(self) if f.name != "gc" for v in [getattr(self, f.name)]},
            gc=self.gc.copy(),
        )


class InMemoryGatewayStore:
    """GatewayStore fake. ``outbox`` lists (topic, key, event) in commit order.

    ``trusted_clock`` stands for the database's trusted time (ADR 0031; default: the system clock).
    """

    def __init__(self, *, trusted_clock: Clock | None = None) -> None:
        self._state = _State()
        self._lock = asyncio.Lock()
        self._trusted = trusted_clock or SystemClock()

    @property
    def outbox(self) -> list[tuple[str, str, Message]]:
        return self._state.outbox

    def events(self, topic: str) -> list[Any]:
        """The events enqueued for ``topic``, in order."""
        return [event for t, _, event in self._state.outbox if t == topic]

    @property
    def state(self) -> _State:
        return self._state

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryGatewayTx]:
        async with self._lock:
            snapshot = self._state.copy()
            try:
                yield InMemoryGatewayTx(self._state, self._trusted.now)
            except BaseException:
                self._state = snapshot
                raise


class InMemoryGatewayTx(MemoryCertificateTx, MemoryGcTx, MemoryRepackTx, MemoryMoveTx, MemoryPointRefsTx):
    _s: _State

    def __init__(self, state: _State, trusted_now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._s = state
        self._trusted_now = trusted_now

    async def claim_event(self, consumer: str, event_id: str) -> bool:
        if not event_id:
            raise ValueError("event without an event_id cannot be processed idempotently")
        if (consumer, event_id) in self._s.processed:
            return False
        self._s.processed.add((consumer, event_id))
        return True

    async def claim_events(self, consumer: str, event_ids: Sequence[str]) -> set[str]:
        return {event_id for event_id in event_ids if await self.claim_event(consumer, event_id)}

    async def enqueue(self, topic: str, key: str, event: Message) -> None:
        expected = TOPIC_MESSAGES.get(topic)
        if expected is None or not isinstance(event, expected):
            raise ValueError(f"{type(event).__name__} is not the message type of topic {topic!r}")
        self._s.outbox.append((topic, key, event))

    async def ensure_account(self, account: Account) -> Account:
        return self._s.accounts.setdefault(account.account_id, account)

    async def get_account(self, account_id: str) -> Account | None:
        return self._s.accounts.get(account_id)

    async def get_data_key(self, account_id: str) -> AccountDataKey | None:
        return self._s.data_keys.get(account_id)

    async def ensure_data_key(self, key: AccountDataKey) -> AccountDataKey:
        if key.account_id not in self._s.accounts:
            raise ValueError(f"unknown account {key.account_id!r}")  # the SQL foreign key
        return self._s.data_keys.setdefault(key.account_id, key)

    async def rewrap_data_key(self, account_id: str, old_master_key_id: str, key: AccountDataKey) -> None:
        current = self._s.data_keys.get(account_id)
        if current is not None and current.master_key_id == old_master_key_id:
            self._s.data_keys[account_id] = key

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
        current = self._s.instances.get(instance_id)
        if current is None:
            current = Instance(instance_id, account_id, None, None, None, None, False, "", 0)
        self._s.instances[instance_id] = dataclasses.replace(
            current,
            account_id=account_id,
            token_sha256=token_sha256,
            token_expires_at=token_expires_at,
            revoked=False,
            region=region or current.region,
            name=name or current.name,
        )

    async def recover_instance(self, instance: Instance) -> bool:
        if instance.instance_id in self._s.instances:
            return False
        self._s.instances[instance.instance_id] = instance
        return True

    async def get_instance(self, instance_id: str, *, for_update: bool = False) -> Instance | None:
        return self._s.instances.get(instance_id)

    async def get_instances(self, instance_ids: Sequence[str], *, for_update: bool = False) -> dict[str, Instance]:
        return {i: self._s.instances[i] for i in sorted(set(instance_ids)) if i in self._s.instances}

    async def find_instance_by_token(self, token_sha256: str) -> Instance | None:
        for instance in self._s.instances.values():
            if instance.token_sha256 == token_sha256:
                return instance
        return None

    async def enroll_instance(self, instance_id: str, credential_sha256: str, hostname: str, now: dt.datetime) -> None:
        current = self._s.instances[instance_id]
        self._s.instances[instance_id] = dataclasses.replace(
            current,
            credential_sha256=credential_sha256,
            hostname=hostname,
            enrolled_at=now,
            token_sha256=None,
            token_expires_at=None,
        )

    async def revoke_instance(self, instance_id: str) -> None:
        current = self._s.instances.get(instance_id)
        if current is not None:
            self._s.instances[instance_id] = dataclasses.replace(
                current, revoked=True, credential_sha256=None, token_sha256=None, token_expires_at=None
            )

    async def set_instance_capacity(self, instance_id: str, capacity_bytes: int, hostname: str) -> None:
        current = self._s.instances[instance_id]
        self._s.instances[instance_id] = dataclasses.replace(current, capacity_bytes=capacity_bytes, hostname=hostname)

    async def insert_job(self, job: Job) -> bool:
        if job.job_id in self._s.jobs:
            return False
        self._s.jobs[job.job_id] = job
        return True

    async def insert_jobs(self, jobs: Sequence[Job]) -> set[str]:
        return {job.job_id for job in jobs if await self.insert_job(job)}

    async def get_job(self, job_id: str, *, for_update: bool = False) -> Job | None:
        return self._s.jobs.get(job_id)

    async def update_job(self, job: Job) -> None:
        current = self._s.jobs[job.job_id]
        self._s.jobs[job.job_id] = dataclasses.replace(
            current,
            state=job.state,
            cancel_requested=job.cancel_requested,
            version_id=job.version_id,
            version_created_at=job.version_created_at,
        )

    async def unfinished_jobs_of(self, instance_ids: Sequence[str]) -> dict[str, list[Job]]:
        out: dict[str, list[Job]] = {}
        for instance_id in instance_ids:
            jobs = await self.unfinished_jobs(instance_id)
            if jobs:
                out[instance_id] = jobs
        return out

    async def get_accounts(self, account_ids: Sequence[str]) -> dict[str, Account]:
        return {a: self._s.accounts[a] for a in account_ids if a in self._s.accounts}

    async def mark_delivered(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            job = self._s.jobs.get(job_id)
            if job is not None and job.state == "queued":
                self._s.jobs[job_id] = dataclasses.replace(job, state="delivered")

    async def unfinished_job_keys(self, instance_ids: Sequence[str]) -> list[tuple[str, str, bool]]:
        wanted = set(instance_ids)
        return [
            (j.instance_id, j.job_id, j.cancel_requested)
            for j in self._s.jobs.values()
            if j.instance_id in wanted and j.state != "finished"
        ]

    async def notify_sessions(self, payloads: Sequence[str]) -> None:
        self._s.notifications.extend(payloads)

    async def unfinished_jobs(self, instance_id: str) -> list[Job]:
        # dicts keep insertion order: the order the jobs were requested in.
        return [j for j in self._s.jobs.values() if j.instance_id == instance_id and j.state != "finished"]

    async def instance_filesystems(self, instance_id: str) -> list[InstanceFilesystem]:
        return sorted(
            (f for (owner, _), f in self._s.filesystems.items() if owner == instance_id), key=lambda f: f.mount_point
        )

    async def add_instance_filesystem(self, filesystem: InstanceFilesystem) -> bool:
        key = (filesystem.instance_id, filesystem.mount_point)
        if key in self._s.filesystems:
            return False
        self._s.filesystems[key] = filesystem
        return True

    async def approve_instance_filesystem(self, instance_id: str, mount_point: str, now: dt.datetime) -> bool:
        current = self._s.filesystems.get((instance_id, mount_point))
        if current is None:
            return False
        self._s.filesystems[(instance_id, mount_point)] = dataclasses.replace(
            current, approved=True, approved_at=current.approved_at or now
        )
        return True

    async def find_chunks(self, account_id: str, chunk_ids: Sequence[bytes]) -> dict[bytes, ChunkLocation]:
        found: dict[bytes, ChunkLocation] = {}
        for cid in chunk_ids:
            location = self._s.chunks.get((account_id, bytes(cid)))
            if location is not None:
                found[bytes(cid)] = location
        return found

    async def chunk_packs(self, account_id: str, chunk_ids: Sequence[bytes]) -> tuple[set[str], list[bytes]]:
        found = await self.find_chunks(account_id, chunk_ids)
        return {loc.pack_id for loc in found.values()}, [bytes(c) for c in chunk_ids if bytes(c) not in found]

    async def insert_pack(self, pack: Pack, chunks: Sequence[ChunkLocation]) -> int:
        self._s.packs.setdefault(pack.pack_id, pack)
        inserted = 0
        for chunk in chunks:
            if (pack.account_id, chunk.chunk_id) not in self._s.chunks:
                # As the SQL adapter: the location always names the pack it was inserted with.
                self._s.chunks[(pack.account_id, chunk.chunk_id)] = dataclasses.replace(
                    chunk,
                    pack_id=pack.pack_id,
                    object_key=pack.object_key,
                    pack_format=pack.format_version,
                    version_id=pack.version_id,
                )
                inserted += 1
        return inserted

    async def packs_locked_before(self, account_id: str, pack_ids: Sequence[str], when: dt.datetime) -> list[Pack]:
        wanted = set(pack_ids)
        return [
            p
            for p in self._s.packs.values()
            if p.pack_id in wanted and p.account_id == account_id and p.retain_until < when
        ]

    async def set_pack_retention(self, pack_id: str, retain_until: dt.datetime) -> None:
        current = self._s.packs[pack_id]
        if retain_until > current.retain_until:
            self._s.packs[pack_id] = dataclasses.replace(current, retain_until=retain_until)

    async def get_point(self, point_id: str) -> Point | None:
        return self._s.points.get(point_id)

    async def find_point(self, job_id: str, mount_point: str) -> Point | None:
        for point in self._s.points.values():
            if point.job_id == job_id and point.mount_point == mount_point:
                return point
        return None

    async def insert_point(self, point: Point) -> None:
        if point.point_id in self._s.points:
            raise ValueError(f"duplicate point {point.point_id}")
        self._s.points[point.point_id] = point
