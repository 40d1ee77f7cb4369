"""Test harness: a real grpc.aio gateway server on 127.0.0.1:0 over in-memory fakes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import secrets
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import blake3
import grpc
import zstandard
from google.protobuf.message import Message
from minio import Minio
from strongroom.agent.v1 import gateway_pb2, gateway_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.gateway.v1 import manifest_pb2_grpc
from strongroom_gateway import manifest_api
from strongroom_gateway.admission import BackupSlots
from strongroom_gateway.agent_versions import gateway_release
from strongroom_gateway.consumers import record_handlers
from strongroom_gateway.crypto import DataKey
from strongroom_gateway.grpc_api import GatewayServicer, register
from strongroom_gateway.ingest import PackWriter
from strongroom_gateway.keys import AccountKeys, MasterKey, MasterKeyring
from strongroom_gateway.manifests import open_manifest, read_point_blobs
from strongroom_gateway.migrations import SPEC
from strongroom_gateway.ports import GatewayStore, Point
from strongroom_gateway.repository import PgGatewayStore
from strongroom_gateway.sessions import SessionRegistry
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform import events
from strongroom_platform.eventbus import Record
from strongroom_platform.events import new_meta, to_timestamp
from strongroom_platform.objectstore_s3 import S3ObjectStore
from strongroom_platform.runtime import start_grpc_server
from strongroom_platform.testing import FakeClock, InMemoryObjectStore
from strongroom_testing.fixtures import PgLogins, S3Config

Metadata = tuple[tuple[str, str], ...]

# An agent of this gateway's release (the version window, ADR 0045).
AGENT_VERSION = ".".join(map(str, gateway_release()))


def meta() -> common_pb2.EventMeta:
    return new_meta("test", FakeClock().now())


class Agent:
    """An enrolled agent: its identity and call metadata."""

    def __init__(self, instance_id: str, account_id: str, credential: str) -> None:
        self.instance_id = instance_id
        self.account_id = account_id
        self.credential = credential

    @property
    def md(self) -> Metadata:
        return (("authorization", f"Bearer {self.instance_id}.{self.credential}"),)


class GatewayHarness:
    def __init__(
        self,
        clock: FakeClock,
        *,
        pack_target_bytes: int = 16 << 20,
        store: GatewayStore | None = None,
        max_running_backups: int = 0,
        manifest_segments: bool = True,
    ) -> None:
        self.clock = clock
        self.manifest_segments = manifest_segments
        self.slots = BackupSlots(max_running_backups, clock=clock)
        self.store: Any = store or InMemoryGatewayStore()
        self.objects = InMemoryObjectStore(clock)
        self.sessions = SessionRegistry()
        self.keyring = MasterKeyring(MasterKey("test-master", secrets.token_bytes(32)))
        self.pack_target_bytes = pack_target_bytes
        self._event_offset = 0

    async def start(self) -> None:
        self.keys = AccountKeys(self.store, self.keyring, self.clock, objects=self.objects)
        self.writer = PackWriter(
            self.store,
            self.objects,
            self.clock,
            keys=self.keys,
            target_bytes=self.pack_target_bytes,
            max_concurrent_writes=2,
        )
        self.handlers = record_handlers(self.store, self.clock, self.sessions)
        servicer = GatewayServicer(
            store=self.store,
            object_store=self.objects,
            clock=self.clock,
            sessions=self.sessions,
            writer=self.writer,
            slots=self.slots,
            manifest_segments=self.manifest_segments,
        )
        manifest_service = manifest_api.register(
            manifest_api.ManifestServicer(store=self.store, object_store=self.objects, keys=self.keys)
        )

        def add(server: grpc.aio.Server) -> None:
            register(servicer)(server)
            manifest_service(server)

        self.server, port = await start_grpc_server("127.0.0.1:0", add)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = gateway_pb2_grpc.AgentGatewayServiceStub(self.channel)
        self.manifest_stub = manifest_pb2_grpc.ManifestServiceStub(self.channel)

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(None)
        await self.writer.close()

    async def deliver(self, topic: str, event: Message) -> None:
        """Feed one event to the gateway's consumer handler, as the event bus would."""
        self._event_offset += 1
        record = Record(topic, 0, self._event_offset, b"k", event.SerializeToString())
        await self.handlers[topic](record)

    async def activate(self, instance_id: str, account_id: str = "acct-a", *, valid_hours: float = 24) -> str:
        token = secrets.token_urlsafe(32)
        expires = self.clock.now() + dt.timedelta(hours=valid_hours)
        await self.deliver(
            events.INSTANCE_ACTIVATED,
            events_pb2.InstanceActivated(
                meta=meta(),
                account_id=account_id,
                instance_id=instance_id,
                region="r1",
                enrollment_token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                token_expires_at=to_timestamp(expires),
            ),
        )
        return token

    async def enrolled_agent(
        self, instance_id: str, account_id: str = "acct-a", *, mount_points: Sequence[str] = ("/", "/data")
    ) -> Agent:
        """An agent enrolled with the filesystems ``mount_points`` (the set its points may be of)."""
        token = await self.activate(instance_id, account_id)
        filesystems = [common_pb2.Filesystem(mount_point=m, device="/dev/vda1", fs_type="ext4") for m in mount_points]
        response = await self.stub.Enroll(
            gateway_pb2.EnrollRequest(
                enrollment_token=token, hostname=instance_id, filesystems=filesystems, agent_version=AGENT_VERSION
            )
        )
        return Agent(response.instance_id, account_id, response.credential)

    async def request_backup(
        self,
        agent: Agent,
        job_id: str,
        priority: common_pb2.BackupPriority.ValueType = common_pb2.BACKUP_PRIORITY_LOW,
        *,
        start_before: dt.datetime | None = None,
    ) -> None:
        request = events_pb2.JobRequested(
            meta=meta(), account_id=agent.account_id, instance_id=agent.instance_id, job_id=job_id, priority=priority
        )
        if start_before is not None:
            request.start_before.CopyFrom(events.to_timestamp(start_before))
        await self.deliver(events.JOB_REQUESTED, request)

    async def request_restore(self, agent: Agent, job_id: str, point_id: str, **fields: Any) -> None:
        await self.deliver(
            events.RESTORE_REQUESTED,
            events_pb2.RestoreRequested(
                meta=meta(),
                account_id=agent.account_id,
                restore_job_id=job_id,
                source_instance_id=fields.pop("source_instance_id", agent.instance_id),
                target_instance_id=agent.instance_id,
                point_id=point_id,
                **fields,
            ),
        )

    async def key_of(self, account_id: str) -> bytes:
        async with self.store.transaction() as tx:
            account = await tx.get_account(account_id)
        assert account is not None
        return account.chunk_id_key

    async def data_key(self, account_id: str) -> DataKey:
        return await self.keys.data_key(account_id)

    async def stored_manifest(self, account_id: str, point_id: str) -> bytes:
        """The manifest bytes (SRMF) of a committed point, opened from its sealed object."""
        stored = await self.objects.get(f"manifests/{account_id}/{point_id}")
        return open_manifest(await self.data_key(account_id), point_id, stored)

    async def point_manifest(self, point_id: str) -> bytes:
        """The version 1 manifest bytes of a committed point as every gateway reader gets them
        (``read_point_manifest``: a version 2 manifest's segments expanded)."""
        return (await self.point_blobs(point_id))[0]

    async def segment_refs(self, point_id: str) -> dict[str, int]:
        """A point's references for its manifest's segments: one per distinct segment, in the pack
        holding it (none for a version 1 manifest)."""
        point, (_, segment_ids) = await self._point(point_id), await self.point_blobs(point_id)
        async with self.store.transaction() as tx:
            refs, missing = await tx.chunk_pack_refs(point.account_id, dict.fromkeys(segment_ids, 1))
        assert not missing
        return refs

    async def segment_packs(self, point_id: str) -> set[str]:
        """The ids of the packs holding the segments of a point's manifest (none for version 1)."""
        return set(await self.segment_refs(point_id))

    async def _point(self, point_id: str) -> Point:
        async with self.store.transaction() as tx:
            point = await tx.get_point(point_id)
        assert point is not None, point_id
        return point

    async def point_blobs(self, point_id: str) -> tuple[bytes, list[bytes]]:
        """``point_manifest``'s bytes and the ids of the segments the manifest is stored in (``read_point_blobs``)."""
        return await read_point_blobs(self.objects, self.keys, await self._point(point_id), store=self.store)

    async def upload(
        self, agent: Agent, job_id: str, contents: Iterable[bytes], *, compress: bool = True
    ) -> gateway_pb2.UploadChunksResponse:
        key = await self.key_of(agent.account_id)
        requests = [upload_request(job_id, key, c, compress=compress) for c in contents]
        return await self.stub.UploadChunks(aiter_of(requests), metadata=agent.md)

    async def commit(
        self, agent: Agent, job_id: str, entries: Sequence[common_pb2.FileEntry], mount_point: str = "/"
    ) -> gateway_pb2.CommitPointResponse:
        header = gateway_pb2.CommitPointRequest(
            header=gateway_pb2.PointHeader(
                job_id=job_id,
                filesystem=common_pb2.Filesystem(
                    mount_point=mount_point, device="/dev/vda1", fs_type="ext4", capacity_bytes=100 << 30
                ),
            )
        )
        batch = gateway_pb2.CommitPointRequest(entries=gateway_pb2.EntryBatch(entries=list(entries)))
        return await self.stub.CommitPoint(aiter_of([header, batch]), metadata=agent.md)


def chunk_id(key: bytes, content: bytes) -> bytes:
    return blake3.blake3(content, key=key).digest()


def upload_request(job_id: str, key: bytes, content: bytes, *, compress: bool = True) -> gateway_pb2.UploadChunkRequest:
    if compress:
        payload = zstandard.ZstdCompressor().compress(content)
        compression = gateway_pb2.CHUNK_COMPRESSION_ZSTD
    else:
        payload, compression = content, gateway_pb2.CHUNK_COMPRESSION_NONE
    return gateway_pb2.UploadChunkRequest(
        job_id=job_id,
        chunk_id=chunk_id(key, content),
        compression=compression,
        raw_length=len(content),
        payload=payload,
    )


def file_entry(path: str, key: bytes, contents: Sequence[bytes]) -> common_pb2.FileEntry:
    return common_pb2.FileEntry(
        path=path,
        type=common_pb2.ENTRY_TYPE_FILE,
        mode=0o644,
        size=sum(len(c) for c in contents),
        mtime_ns=1,
        chunk_ids=[chunk_id(key, c) for c in contents],
    )


def dir_entry(path: str) -> common_pb2.FileEntry:
    return common_pb2.FileEntry(path=path, type=common_pb2.ENTRY_TYPE_DIRECTORY, mode=0o755)


def stamped(job_id: str, entries: Iterable[common_pb2.FileEntry]) -> list[common_pb2.FileEntry]:
    """``entries`` with an mtime of ``job_id``'s own, so no manifest record of its point equals one of
    another job's point: the points then share no manifest segment (format version 2, ADR 0065),
    whatever the account's random chunk-id key. Each commit's segments go into one pack of their own,
    referenced by that point alone (the GC and repack tests count on it: a point's segment pack lives
    and dies with the point, and its ``segment_packs`` are exactly what it adds)."""
    mtime = 1_000_000_000 + zlib.crc32(job_id.encode())
    out = []
    for entry in entries:
        copy = common_pb2.FileEntry()
        copy.CopyFrom(entry)
        copy.mtime_ns = mtime
        out.append(copy)
    return out


async def aiter_of(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


# Agents on the real Connect stream (the admission tests, ADR 0053).


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait up to 5 s for ``condition`` to hold."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


ConnectCall = grpc.aio.StreamStreamCall[gateway_pb2.AgentReport, gateway_pb2.AgentCommand]


class AgentStream:
    """An agent's Connect stream, read by a task of its own (a timed-out read would cancel the call)."""

    def __init__(self, call: ConnectCall) -> None:
        self.call = call
        self._backups: asyncio.Queue[str] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for command in self.call:
            assert isinstance(command, gateway_pb2.AgentCommand)
            if command.HasField("run_backup"):
                await self._backups.put(command.run_backup.job_id)

    async def next_backup(self, within: float) -> str | None:
        try:
            return await asyncio.wait_for(self._backups.get(), within)
        except TimeoutError:
            return None

    async def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self._reader


async def connected_agents(gw: GatewayHarness, count: int) -> tuple[list[Agent], list[AgentStream]]:
    """``count`` enrolled agents ``i-0`` … with their Connect streams open, once every session is up."""
    agents = [await gw.enrolled_agent(f"i-{n}") for n in range(count)]
    streams = [AgentStream(gw.stub.Connect(metadata=a.md)) for a in agents]
    await eventually(lambda: all(gw.sessions.get(a.instance_id) is not None for a in agents))
    return agents, streams


def s3_client(s3_config: S3Config) -> Minio:
    return Minio(
        s3_config.endpoint,
        access_key=s3_config.access_key,
        secret_key=s3_config.secret_key,
        secure=s3_config.secure,
        region="us-east-1",
    )


@contextlib.asynccontextmanager
async def real_harness(
    s3_config: S3Config, pg_logins: PgLogins, clock: FakeClock, bucket_prefix: str
) -> AsyncIterator[tuple[GatewayHarness, S3ObjectStore, Minio]]:
    """A started gateway over real PostgreSQL and S3 (a fresh bucket), its object store and S3 client."""
    client = s3_client(s3_config)
    objects = S3ObjectStore(client, f"{bucket_prefix}-{uuid.uuid4().hex[:12]}", clock=clock)
    await objects.ensure_bucket()
    pool = await pg_logins.pool(SPEC)
    gw = GatewayHarness(clock, store=PgGatewayStore(pool))
    gw.objects = objects  # type: ignore[assignment]
    await gw.start()
    try:
        yield gw, objects, client
    finally:
        await gw.stop()
        await pool.close()
