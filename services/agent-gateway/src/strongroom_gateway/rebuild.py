"""Rebuild the control plane from the bucket and the master key (``strongroom-admin rebuild --from-bucket``, ADR 0032).

Into a fresh gateway database it writes, from the bucket alone:

1. **accounts and data keys** — every key record (``vault/keys/``) whose wrapped key opens with
   the configured master keys, with the account's chunking secrets;
2. **instances** — the newest record of each (``vault/instances/``) that opens: id, account,
   region, name, host and recorded filesystems, without token or credential (agents enroll
   again with a new token for the same id);
3. **packs and the chunk index** — every pack version under ``packs/`` whose index opens with
   its account's key (only the index is read: header, then the pack's tail);
4. **points and versions** — every point record (``vault/points/``) whose manifest version is
   still stored, with a finished backup job standing for the job that made it.

It enqueues, in the gateway's outbox, an ``instance-recovered`` event per instance (the scheduler
knows it again) and a ``point-created`` event per point (the catalog indexes it for browsing,
billing counts it), published when the gateway starts. Every version is read, including those
behind delete markers or later objects on the same key; what does not open with the account's key
is not the gateway's and is skipped (counted in the report).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections import defaultdict
from collections.abc import Callable

from strongroom.agent.v1 import gateway_pb2
from strongroom.events.v1 import events_pb2
from strongroom.vault.v1 import vault_pb2
from strongroom_platform.clock import Clock
from strongroom_platform.events import INSTANCE_RECOVERED, POINT_CREATED, from_timestamp, new_meta, to_timestamp
from strongroom_platform.objectstore import ObjectNotFound, ObjectStore, ObjectVersion

from strongroom_gateway import packfile, vault_format
from strongroom_gateway.crypto import DataKey
from strongroom_gateway.ingest import LOCK_MARGIN, RETENTION
from strongroom_gateway.jobs import PRODUCER
from strongroom_gateway.keys import MasterKeyError, MasterKeyring
from strongroom_gateway.ports import Account, ChunkLocation, GatewayStore, Instance, InstanceFilesystem, Job, Pack

log = logging.getLogger(__name__)

# Bytes read from a pack's end to find its index in one request (a bigger index is read again).
_TAIL_BYTES = 256 << 10
PACK_READS = 8


@dataclasses.dataclass
class RebuildReport:
    """What a rebuild restored, and what it found but could not use (with the reasons)."""

    accounts: int = 0
    instances: int = 0
    packs: int = 0
    chunks: int = 0
    points: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.accounts} account(s), {self.instances} instance(s), {self.packs} pack(s) with {self.chunks}"
            f" chunk(s), {self.points} point(s); {len(self.skipped)} object version(s) skipped"
        )


async def _versions(objects: ObjectStore, prefix: str) -> dict[str, list[ObjectVersion]]:
    found: dict[str, list[ObjectVersion]] = defaultdict(list)
    async for version in objects.list_versions(prefix):
        found[version.key].append(version)
    return found


async def rebuild_from_bucket(
    *,
    store: GatewayStore,
    objects: ObjectStore,
    keyring: MasterKeyring,
    clock: Clock,
    progress: Callable[[str], None] = log.info,
) -> RebuildReport:
    """Restore accounts, keys, instances, packs, chunks and points from the bucket (see the module doc).

    Idempotent: rows that exist are kept and their events are not sent again.
    """
    report = RebuildReport()
    keys = await _restore_keys(store, objects, keyring, clock, report)
    progress(f"keys: {report.accounts} account(s)")
    await _restore_instances(store, objects, keys, clock, report)
    progress(f"instances: {report.instances}")
    await _restore_packs(store, objects, keys, clock, report)
    progress(f"packs: {report.packs} with {report.chunks} chunk(s)")
    await _restore_points(store, objects, keys, clock, report)
    progress(f"points: {report.points}")
    return report


async def _restore_keys(
    store: GatewayStore, objects: ObjectStore, keyring: MasterKeyring, clock: Clock, report: RebuildReport
) -> dict[str, DataKey]:
    """Every account's data key from its key records; the current master key's record preferred."""
    opened: dict[str, list[tuple[vault_pb2.AccountKeyRecord, bytes]]] = defaultdict(list)
    for key, versions in (await _versions(objects, vault_format.KEYS_PREFIX)).items():
        ids = vault_format.parse_key(key, vault_format.KEYS_PREFIX, 2)
        for version in versions:
            try:
                record = vault_format.decode_key_record(await objects.get(key, version_id=version.version_id))
                if ids is None or [record.account_id, record.master_key_id] != ids:
                    raise vault_format.VaultFormatError("the record names another account or master key than its key")
                raw = keyring.unwrap(record.account_id, record.master_key_id, bytes(record.wrapped_key))
            except (vault_format.VaultFormatError, MasterKeyError, ObjectNotFound) as exc:
                report.skipped.append(f"{key} ({version.version_id}): {exc}")
                continue
            opened[record.account_id].append((record, raw))
    out: dict[str, DataKey] = {}
    for account_id, candidates in sorted(opened.items()):
        if len({raw for _, raw in candidates}) > 1:
            report.skipped.append(f"account {account_id}: its key records hold different data keys; not restored")
            continue
        current = [c for c in candidates if c[0].master_key_id == keyring.current.key_id]
        record, raw = (current or candidates)[0]
        data_key = DataKey(account_id, raw)
        account = next(
            (a for a in (_secrets(r, data_key, report) for r, _ in candidates) if a is not None),
            None,
        )
        if account is None:
            # Without its chunking secrets the account's new data will not deduplicate against the old.
            report.skipped.append(f"account {account_id}: no chunking secrets in its key records; new ones made")
            account = Account(account_id, secrets.token_bytes(32), secrets.randbits(32))
        async with store.transaction() as tx:
            await tx.ensure_account(account)
            await tx.ensure_data_key(vault_format.key_row(record))
        out[account_id] = data_key
        report.accounts += 1
    return out


def _secrets(record: vault_pb2.AccountKeyRecord, data_key: DataKey, report: RebuildReport) -> Account | None:
    try:
        return vault_format.open_account_secrets(record, data_key)
    except vault_format.VaultFormatError as exc:
        report.skipped.append(str(exc))
        return None


async def _restore_instances(
    store: GatewayStore, objects: ObjectStore, keys: dict[str, DataKey], clock: Clock, report: RebuildReport
) -> None:
    newest: dict[str, vault_pb2.InstanceRecord] = {}
    for key, versions in (await _versions(objects, vault_format.INSTANCES_PREFIX)).items():
        ids = vault_format.parse_key(key, vault_format.INSTANCES_PREFIX, 3)
        data_key = keys.get(ids[0]) if ids is not None else None
        for version in versions:
            if ids is None or data_key is None:
                report.skipped.append(f"{key}: not an instance record of a restored account")
                break
            try:
                data = await objects.get(key, version_id=version.version_id)
                record = vault_format.open_instance_record(data_key, ids[1], data)
            except (vault_format.VaultFormatError, ObjectNotFound) as exc:
                report.skipped.append(f"{key} ({version.version_id}): {exc}")
                continue
            known = newest.get(record.instance_id)
            if known is None or from_timestamp(record.written_at) > from_timestamp(known.written_at):
                newest[record.instance_id] = record
    now = clock.now()
    for record in sorted(newest.values(), key=lambda r: r.instance_id):
        instance = Instance(
            instance_id=record.instance_id,
            account_id=record.account_id,
            token_sha256=None,
            token_expires_at=None,
            credential_sha256=None,
            enrolled_at=from_timestamp(record.enrolled_at) if record.HasField("enrolled_at") else None,
            revoked=False,
            hostname=record.hostname,
            capacity_bytes=sum(f.filesystem.capacity_bytes for f in record.filesystems),
            region=record.region,
            name=record.name,
        )
        async with store.transaction() as tx:
            if not await tx.recover_instance(instance):
                continue
            for fs in record.filesystems:
                await tx.add_instance_filesystem(
                    InstanceFilesystem(
                        instance_id=record.instance_id,
                        mount_point=fs.filesystem.mount_point,
                        filesystem=fs.filesystem.SerializeToString(),
                        approved=fs.approved,
                        first_seen_at=from_timestamp(fs.first_seen_at),
                        approved_at=from_timestamp(fs.approved_at) if fs.HasField("approved_at") else None,
                    )
                )
            await tx.enqueue(
                INSTANCE_RECOVERED,
                record.instance_id,
                events_pb2.InstanceRecovered(
                    meta=new_meta(PRODUCER, now),
                    account_id=record.account_id,
                    instance_id=record.instance_id,
                    region=record.region,
                    name=record.name,
                    hostname=record.hostname,
                ),
            )
        report.instances += 1


async def _restore_packs(
    store: GatewayStore, objects: ObjectStore, keys: dict[str, DataKey], clock: Clock, report: RebuildReport
) -> None:
    packs = await _versions(objects, "packs/")
    slots = asyncio.Semaphore(PACK_READS)

    async def one(key: str, versions: list[ObjectVersion]) -> None:
        ids = vault_format.parse_key(key, "packs/", 3)
        data_key = keys.get(ids[0]) if ids is not None else None
        if ids is None or data_key is None:
            report.skipped.append(f"{key}: not a pack of a restored account")
            return
        for version in versions:  # the pack's own version opens; a forged one over it does not
            try:
                async with slots:
                    pack, chunks = await _read_pack(objects, key, version.version_id, ids, data_key, clock)
            except (packfile.PackFormatError, ObjectNotFound) as exc:
                report.skipped.append(f"{key} ({version.version_id}): {exc}")
                continue
            async with store.transaction() as tx:
                inserted = await tx.insert_pack(pack, chunks)
            report.chunks += inserted  # not `+= await`: that would add to a value read before the wait
            report.packs += 1
            return

    await asyncio.gather(*(one(key, versions) for key, versions in packs.items()))


async def _read_pack(
    objects: ObjectStore, key: str, version_id: str | None, ids: list[str], data_key: DataKey, clock: Clock
) -> tuple[Pack, list[ChunkLocation]]:
    info = await objects.stat(key, version_id=version_id)
    header = await objects.get(key, length=packfile.HEADER_SIZE, version_id=version_id)
    tail_length = min(info.size, _TAIL_BYTES)
    tail = await objects.get(key, offset=info.size - tail_length, version_id=version_id)
    try:
        entries = packfile.decode_index_from_tail(header, tail, info.size, data_key)
    except packfile.PackFormatError as exc:
        if "index not in tail" not in str(exc):
            raise
        entries = packfile.decode_index(await objects.get(key, version_id=version_id), data_key)
    version = packfile.check_header(header)
    pack_id = ids[2]
    # The write time is not stored; the lock says when it was at the latest (a lock only grows).
    retain_until = info.retain_until or clock.now()
    created_at = retain_until - RETENTION - LOCK_MARGIN
    pack = Pack(pack_id, ids[0], key, info.size, created_at, retain_until, version, version_id)
    chunks = [
        ChunkLocation(e.chunk_id, pack_id, key, e.offset, e.length, e.raw_length, e.compression, version, version_id)
        for e in entries
    ]
    return pack, chunks


async def _restore_points(
    store: GatewayStore, objects: ObjectStore, keys: dict[str, DataKey], clock: Clock, report: RebuildReport
) -> None:
    records: list[vault_pb2.PointRecord] = []
    for key, versions in (await _versions(objects, vault_format.POINTS_PREFIX)).items():
        ids = vault_format.parse_key(key, vault_format.POINTS_PREFIX, 2)
        data_key = keys.get(ids[0]) if ids is not None else None
        if ids is None or data_key is None:
            report.skipped.append(f"{key}: not a point record of a restored account")
            continue
        for version in versions:
            try:
                data = await objects.get(key, version_id=version.version_id)
                record = vault_format.open_point_record(data_key, ids[1], data)
                await objects.stat(record.manifest_key, version_id=record.manifest_version_id or None)
            except (vault_format.VaultFormatError, ObjectNotFound) as exc:
                report.skipped.append(f"{key} ({version.version_id}): {exc}")
                continue
            records.append(record)
            break
    now = clock.now()
    # In the order they were made, so that the catalog sees each instance's versions in order.
    for record in sorted(records, key=lambda r: (from_timestamp(r.created_at), r.point_id)):
        point = vault_format.point_row(record)
        version_created_at = from_timestamp(record.version_created_at)
        job = Job(
            job_id=record.job_id,
            instance_id=record.instance_id,
            account_id=record.account_id,
            kind="backup",
            command=gateway_pb2.AgentCommand().SerializeToString(),
            state="finished",
            cancel_requested=False,
            created_at=version_created_at,
            version_id=record.version_id,
            version_created_at=version_created_at,
        )
        async with store.transaction() as tx:
            if await tx.get_point(point.point_id) is not None or await tx.find_point(job.job_id, point.mount_point):
                continue
            await tx.insert_job(job)
            await tx.insert_point(point)
            await tx.enqueue(
                POINT_CREATED,
                record.instance_id,
                events_pb2.PointCreated(
                    meta=new_meta(PRODUCER, now),
                    account_id=record.account_id,
                    instance_id=record.instance_id,
                    job_id=record.job_id,
                    version_id=record.version_id,
                    point_id=record.point_id,
                    filesystem=record.filesystem,
                    version_created_at=record.version_created_at,
                    manifest_key=record.manifest_key,
                    file_count=record.file_count,
                    total_bytes=record.total_bytes,
                    retain_until=to_timestamp(point.retain_until),
                    instance_capacity_bytes=record.filesystem.capacity_bytes,
                ),
            )
        report.points += 1
