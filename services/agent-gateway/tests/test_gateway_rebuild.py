"""Disaster recovery (ADR 0032): the bucket and the master key rebuild the gateway's database.

A backup is made, the database is dropped (a fresh store), the rebuild reads the bucket, and a
gateway on the rebuilt database lets the agent enroll again to the same instance id and restore
the point byte for byte. The attacker's S3 moves (a delete marker on a key record, a forged object
over a pack and a point record) change nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets

import pytest
from gateway_helpers import AGENT_VERSION, Agent, GatewayHarness, chunk_id, dir_entry, file_entry, meta
from strongroom.agent.v1 import gateway_pb2
from strongroom.events.v1 import events_pb2
from strongroom_gateway import vault_format
from strongroom_gateway.keys import AccountKeys, MasterKey, MasterKeyring
from strongroom_gateway.rebuild import rebuild_from_bucket
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform import events
from strongroom_platform.events import to_timestamp
from strongroom_platform.testing import FakeClock

CONTENTS = [b"alpha" * 100, b"beta" * 300, b"gamma" * 7]


async def _backed_up(gw: GatewayHarness) -> tuple[Agent, str]:
    agent = await gw.enrolled_agent("i-1", mount_points=("/", "/data"))
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    await gw.upload(agent, "job-1", CONTENTS)
    entries = [dir_entry(""), file_entry("a", key, [CONTENTS[0]]), file_entry("b", key, [CONTENTS[1], CONTENTS[2]])]
    response = await gw.commit(agent, "job-1", entries)
    return agent, response.point_id


async def _state(store: InMemoryGatewayStore, point_id: str, ids: list[bytes]) -> tuple[object, ...]:
    async with store.transaction() as tx:
        point = await tx.get_point(point_id)
        chunks = await tx.find_chunks("acct-a", ids)
        instance = await tx.get_instance("i-1")
        return (
            await tx.get_account("acct-a"),
            await tx.get_data_key("acct-a"),
            point,
            sorted((c.chunk_id, c.pack_id, c.offset, c.length, c.version_id) for c in chunks.values()),
            await tx.instance_filesystems("i-1"),
            None if instance is None else (instance.account_id, instance.region, instance.hostname),
        )


async def test_rebuild_from_the_bucket_then_reenroll_and_restore(gw: GatewayHarness, clock: FakeClock) -> None:
    _, point_id = await _backed_up(gw)
    key = await gw.key_of("acct-a")
    ids = [chunk_id(key, c) for c in CONTENTS]
    before = await _state(gw.store, point_id, ids)

    # The attacker's moves with the services' S3 credentials.
    gw.objects.add_delete_marker(vault_format.key_record_key("acct-a", gw.keyring.current.key_id))
    # The uploaded chunks' pack and the manifest's segments' (format version 2): both forged.
    segments = sum((await gw.segment_refs(point_id)).values())
    pack_keys = tuple([k async for k in gw.objects.list("packs/")])
    assert len(pack_keys) == 2 and segments >= 1
    for pack_key in pack_keys:
        gw.objects.put_new_version(pack_key, b"SRPK\x02forged")
    gw.objects.put_new_version(vault_format.point_record_key("acct-a", point_id), b"SRPR\x01forged")

    rebuilt = InMemoryGatewayStore()
    report = await rebuild_from_bucket(store=rebuilt, objects=gw.objects, keyring=gw.keyring, clock=clock)
    counts = (report.accounts, report.instances, report.packs, report.chunks, report.points)
    assert counts == (1, 1, 2, 3 + segments, 1)  # the segments are blobs of their pack's index, like chunks
    # Only forged versions may be skipped (which are tried depends on the order versions are listed in).
    assert all(s.startswith((*pack_keys, "vault/points/")) for s in report.skipped), report.skipped
    after = await _state(rebuilt, point_id, ids)
    assert after == before
    [recovered] = rebuilt.events(events.INSTANCE_RECOVERED)
    assert isinstance(recovered, events_pb2.InstanceRecovered)
    assert (recovered.instance_id, recovered.account_id, recovered.region) == ("i-1", "acct-a", "r1")
    [created] = rebuilt.events(events.POINT_CREATED)
    [original] = gw.store.events(events.POINT_CREATED)
    for field in ("point_id", "instance_id", "job_id", "version_id", "manifest_key", "file_count", "total_bytes"):
        assert getattr(created, field) == getattr(original, field), field
    assert created.version_created_at == original.version_created_at
    assert created.filesystem == original.filesystem

    # Running it again changes nothing and sends nothing again.
    again = await rebuild_from_bucket(store=rebuilt, objects=gw.objects, keyring=gw.keyring, clock=clock)
    assert (again.instances, again.points) == (0, 0)
    assert len(rebuilt.events(events.POINT_CREATED)) == 1

    # A gateway on the rebuilt database: no credential survived; a new token enrolls the same id.
    gw2 = GatewayHarness(clock, store=rebuilt)
    gw2.objects, gw2.keyring = gw.objects, gw.keyring
    await gw2.start()
    try:
        token = secrets.token_urlsafe(32)
        await gw2.deliver(
            events.INSTANCE_ACTIVATED,
            events_pb2.InstanceActivated(
                meta=meta(),
                account_id="acct-a",
                instance_id="i-1",
                region="r1",
                enrollment_token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                token_expires_at=to_timestamp(clock.now() + dt.timedelta(hours=1)),
            ),
        )
        enrolled = await gw2.stub.Enroll(
            gateway_pb2.EnrollRequest(enrollment_token=token, hostname="i-1", agent_version=AGENT_VERSION)
        )
        assert enrolled.instance_id == "i-1"
        again_agent = Agent("i-1", "acct-a", enrolled.credential)
        await gw2.request_restore(again_agent, "r-1", point_id)
        call = gw2.stub.Connect(metadata=again_agent.md)
        command = await asyncio.wait_for(call.read(), 5)
        call.cancel()
        assert isinstance(command, gateway_pb2.AgentCommand) and command.run_restore.point_id == point_id
        got = [
            (r.chunk_id, r.data)
            async for r in gw2.stub.ReadChunks(
                gateway_pb2.ReadChunksRequest(restore_job_id="r-1", chunk_ids=ids), metadata=again_agent.md
            )
        ]
        assert got == list(zip(ids, CONTENTS, strict=True))
        # Later backups deduplicate against the old data: the chunking secrets came back too.
        assert await gw2.key_of("acct-a") == key
        # And no new data key was minted: the old one opens the old manifest.
        assert (await gw2.stored_manifest("acct-a", point_id))[:5] == b"SRMF\x02"
        # The rebuilt chunk table finds the segments: the same entries as before the disaster.
        assert await gw2.point_manifest(point_id) == await gw.point_manifest(point_id)
    finally:
        await gw2.stop()


async def test_without_the_master_key_nothing_is_rebuilt(gw: GatewayHarness, clock: FakeClock) -> None:
    await _backed_up(gw)
    wrong = MasterKeyring(MasterKey(gw.keyring.current.key_id, secrets.token_bytes(32)))
    rebuilt = InMemoryGatewayStore()
    report = await rebuild_from_bucket(store=rebuilt, objects=gw.objects, keyring=wrong, clock=clock)
    assert (report.accounts, report.instances, report.packs, report.points) == (0, 0, 0, 0)
    assert any("does not unwrap" in s for s in report.skipped), report.skipped
    assert not rebuilt.events(events.POINT_CREATED)


@pytest.mark.parametrize("rotated", [False, True])
async def test_a_rotated_master_key_rebuilds_with_the_new_key_alone(
    gw: GatewayHarness, clock: FakeClock, rotated: bool
) -> None:
    _, point_id = await _backed_up(gw)
    ring = gw.keyring
    if rotated:
        new = MasterKey("m-new", secrets.token_bytes(32))
        rotating = MasterKeyring(new, [ring.current])
        await AccountKeys(gw.store, rotating, clock, objects=gw.objects).data_key("acct-a")
        ring = MasterKeyring(new)  # the retired key is gone
    rebuilt = InMemoryGatewayStore()
    report = await rebuild_from_bucket(store=rebuilt, objects=gw.objects, keyring=ring, clock=clock)
    assert (report.accounts, report.points) == (1, 1)
    async with rebuilt.transaction() as tx:
        stored = await tx.get_data_key("acct-a")
    assert stored is not None and stored.master_key_id == ring.current.key_id
