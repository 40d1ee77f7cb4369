"""Reads by pinned object version (ADR 0025): an attacker with the S3 credentials every service holds
puts a delete marker and a forged object on a pack key and on the manifest key; restores, the
catalog's manifest reads and synthesis still read exactly what was written, and lock extensions
land on the written version.

Run over the in-memory fakes and over real PostgreSQL + S3 (versitygw) with a plain S3 client.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from gateway_helpers import Agent, GatewayHarness, aiter_of, chunk_id, dir_entry, file_entry, real_harness
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.gateway.v1 import manifest_pb2
from strongroom_gateway import vault_format
from strongroom_gateway.ingest import RETENTION
from strongroom_gateway.keys import AccountKeys, DataKeyMissing
from strongroom_gateway.manifests import open_manifest
from strongroom_gateway.rebuild import rebuild_from_bucket
from strongroom_gateway.repository import PgGatewayStore
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform import events
from strongroom_platform.clock import SystemClock
from strongroom_platform.manifest import decode_manifest
from strongroom_platform.objectstore import ObjectNotFound
from strongroom_platform.testing import FakeClock
from strongroom_testing.contracts import Attacker, InMemoryAttacker, S3Attacker
from strongroom_testing.fixtures import PgLogins, S3Config


@dataclass
class Setup:
    gw: GatewayHarness
    attacker: Attacker
    # The schema owner's DSN (a DBA, or whoever holds the migration credentials): the service's own
    # role may not delete keys any more (ADR 0031), the owner still can.
    owner_dsn: str = ""


@pytest.fixture(params=["memory", pytest.param("s3", marks=pytest.mark.integration)])
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    # Locks are checked against real time by S3: the gateway's clock starts at the real now.
    clock = FakeClock(SystemClock().now())
    if request.param == "memory":
        gw = GatewayHarness(clock)
        attacker: Attacker = InMemoryAttacker(gw.objects)
        await gw.start()
        try:
            yield Setup(gw, attacker)
        finally:
            await gw.stop()
        return
    s3_config: S3Config = request.getfixturevalue("s3_config")
    pg_logins: PgLogins = request.getfixturevalue("pg_logins")
    async with real_harness(s3_config, pg_logins, clock, "pinned") as (gw, objects, client):
        yield Setup(gw, S3Attacker(client, objects.bucket), owner_dsn=pg_logins.owner)


CONTENTS = [os.urandom(70_000), os.urandom(50_000), b"small text\n" * 100]


async def _backup(gw: GatewayHarness, instance: str, job_id: str) -> tuple[Agent, str]:
    agent = await gw.enrolled_agent(instance)
    await gw.request_backup(agent, job_id)
    key = await gw.key_of(agent.account_id)
    await gw.upload(agent, job_id, CONTENTS)
    entries = [
        dir_entry(""),
        file_entry("a.bin", key, CONTENTS[:2]),
        file_entry("notes.txt", key, CONTENTS[2:]),
        common_pb2.FileEntry(path="link", type=common_pb2.ENTRY_TYPE_SYMLINK, link_target="notes.txt"),
    ]
    response = await gw.commit(agent, job_id, entries)
    return agent, response.point_id


async def _tamper_everything(gw: GatewayHarness, attacker: Attacker, account_id: str, point_id: str) -> list[str]:
    """A delete marker and then a forged object on every pack and on the manifest of the point."""
    keys = [k async for k in gw.objects.list(f"packs/{account_id}/")]
    keys.append(f"manifests/{account_id}/{point_id}")
    for key in keys:
        await attacker.delete_marker(key)
        with pytest.raises(ObjectNotFound):
            await gw.objects.get(key)  # the latest version is gone...
        await attacker.overwrite(key, b"forged by someone holding the S3 credentials")
        assert await gw.objects.get(key) == b"forged by someone holding the S3 credentials"
    return keys


async def _restore(gw: GatewayHarness, agent: Agent, point_id: str, job_id: str) -> dict[str, bytes]:
    """What an agent restoring the point receives: path -> file content (symlinks: their target)."""
    await gw.request_restore(agent, job_id, point_id)
    call = gw.stub.Connect(metadata=agent.md)
    try:
        while (await asyncio.wait_for(call.read(), 5)).run_restore.restore_job_id != job_id:
            pass
    finally:
        call.cancel()
    entries: list[common_pb2.FileEntry] = []
    request = gateway_pb2.ReadManifestRequest(restore_job_id=job_id)
    async for response in gw.stub.ReadManifest(request, metadata=agent.md):
        entries.extend(response.entries)
    restored: dict[str, bytes] = {}
    for entry in entries:
        if entry.type == common_pb2.ENTRY_TYPE_SYMLINK:
            restored[entry.path] = entry.link_target.encode()
        elif entry.type == common_pb2.ENTRY_TYPE_FILE:
            read = gateway_pb2.ReadChunksRequest(restore_job_id=job_id, chunk_ids=entry.chunk_ids)
            restored[entry.path] = b"".join([r.data async for r in gw.stub.ReadChunks(read, metadata=agent.md)])
    return restored


async def test_a_point_restores_byte_identical_after_delete_markers_and_overwrites(setup: Setup) -> None:
    gw = setup.gw
    agent, point_id = await _backup(gw, "i-pin-1", "job-1")
    await _tamper_everything(gw, setup.attacker, agent.account_id, point_id)

    restored = await _restore(gw, agent, point_id, "r-1")
    assert restored == {"a.bin": CONTENTS[0] + CONTENTS[1], "notes.txt": CONTENTS[2], "link": b"notes.txt"}

    # The catalog's read (ManifestService) gets the written manifest too.
    data = b"".join(
        [
            piece.data
            async for piece in gw.manifest_stub.ReadPointManifest(
                manifest_pb2.ReadPointManifestRequest(point_id=point_id)
            )
        ]
    )
    assert [e.path for e in decode_manifest(data)] == ["", "a.bin", "link", "notes.txt"]


async def test_synthesis_and_lock_extension_use_the_written_versions(setup: Setup) -> None:
    gw = setup.gw
    agent, base_id = await _backup(gw, "i-pin-2", "job-1")
    packs = await _tamper_everything(gw, setup.attacker, agent.account_id, base_id)

    # A month later an incremental point reuses every chunk: the base manifest is read by its
    # version, and the old packs' locks are extended on the versions the point needs.
    gw.clock.advance(RETENTION.total_seconds())
    await gw.request_backup(agent, "job-2")
    header = gateway_pb2.PointHeader(
        job_id="job-2", filesystem=common_pb2.Filesystem(mount_point="/"), base_point_id=base_id, entry_count=4
    )
    response = await gw.stub.CommitPoint(aiter_of([gateway_pb2.CommitPointRequest(header=header)]), metadata=agent.md)
    manifest = await gw.point_manifest(response.point_id)
    assert [e.path for e in decode_manifest(manifest)] == ["", "a.bin", "link", "notes.txt"]

    first_chunk = chunk_id(await gw.key_of(agent.account_id), CONTENTS[0])
    async with gw.store.transaction() as tx:
        locations = await tx.find_chunks(agent.account_id, [first_chunk])
    [location] = locations.values()
    assert location.version_id is not None
    pinned = await gw.objects.stat(location.object_key, version_id=location.version_id)
    assert pinned.retain_until is not None and pinned.retain_until > gw.clock.now() + RETENTION
    assert location.object_key in packs


async def _attack_the_key(setup: Setup, account_id: str) -> None:
    """``DELETE FROM gateway.account_keys`` as the schema owner (the gateway's role is refused, ADR
    0031) and a plain S3 DELETE of the account's key record (a delete marker)."""
    gw, attacker = setup.gw, setup.attacker
    if isinstance(gw.store, PgGatewayStore):
        owner = await asyncpg.connect(setup.owner_dsn)
        try:
            assert await owner.execute("DELETE FROM gateway.account_keys") == "DELETE 1"
        finally:
            await owner.close()
    else:
        gw.store.state.data_keys.clear()
    await attacker.delete_marker(vault_format.key_record_key(account_id, gw.keyring.current.key_id))


async def _alerts(gw: GatewayHarness) -> list[events_pb2.AlertRaised]:
    if isinstance(gw.store, PgGatewayStore):
        async with gw.store.transaction() as tx:
            rows = await tx._conn.fetch("SELECT payload FROM outbox WHERE topic = $1", events.ALERT_RAISED)
        return [events_pb2.AlertRaised.FromString(r["payload"]) for r in rows]
    return list(gw.store.events(events.ALERT_RAISED))


async def test_a_deleted_data_key_is_refused_not_minted_and_the_bucket_still_opens_the_point(setup: Setup) -> None:
    """Issue 9's attack: the key row deleted and the gateway restarted; before, it quietly minted a
    new key and the locked point became undecryptable. Now: refused with an alert, and a rebuild
    from the bucket restores the key and the point."""
    gw = setup.gw
    agent, point_id = await _backup(gw, "i-key-1", "job-1")
    await _attack_the_key(setup, agent.account_id)
    restarted = AccountKeys(gw.store, gw.keyring, gw.clock, objects=gw.objects)
    with pytest.raises(DataKeyMissing, match="no new key is generated"):
        await restarted.data_key(agent.account_id)
    async with gw.store.transaction() as tx:
        assert await tx.get_data_key(agent.account_id) is None  # nothing minted
    [alert] = await _alerts(gw)
    assert alert.kind == events_pb2.ALERT_KIND_DATA_KEY_MISSING and alert.record_key == agent.account_id.encode()

    # The repair: the key back from the bucket (every version is read, the marker hides nothing).
    rebuilt = InMemoryGatewayStore()
    report = await rebuild_from_bucket(store=rebuilt, objects=gw.objects, keyring=gw.keyring, clock=gw.clock)
    assert report.accounts == 1
    async with rebuilt.transaction() as tx:
        key = await tx.get_data_key(agent.account_id)
    assert key is not None
    async with gw.store.transaction() as tx:
        await tx.ensure_data_key(key)
    opened = AccountKeys(gw.store, gw.keyring, gw.clock, objects=gw.objects)
    manifest = await gw.objects.get(f"manifests/{agent.account_id}/{point_id}")
    assert open_manifest(await opened.data_key(agent.account_id), point_id, manifest)[:4] == b"SRMF"
