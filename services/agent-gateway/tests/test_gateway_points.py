"""CommitPoint: validation, missing chunks, manifest, versions, point-created, lock extension."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from gateway_helpers import AGENT_VERSION, Agent, GatewayHarness, chunk_id, dir_entry, file_entry
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_platform import events
from strongroom_platform.events import from_timestamp
from strongroom_platform.manifest import decode_manifest

HELLO = gateway_pb2.AgentReport(
    hello=gateway_pb2.AgentHello(
        agent_version=AGENT_VERSION,
        filesystems=[
            common_pb2.Filesystem(mount_point="/", capacity_bytes=40 << 30),
            common_pb2.Filesystem(mount_point="/data", capacity_bytes=100 << 30),
        ],
    )
)


async def _running_backup(gw: GatewayHarness, job_id: str = "job-1") -> Agent:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, job_id)
    call = gw.stub.Connect(metadata=agent.md)
    await call.write(HELLO)
    assert (await asyncio.wait_for(call.read(), 5)).run_backup.job_id == job_id
    for _ in range(200):
        if gw.store.state.instances["i-1"].capacity_bytes:
            break
        await asyncio.sleep(0.01)
    call.cancel()
    return agent


async def test_commit_writes_the_manifest_and_emits_point_created(gw: GatewayHarness) -> None:
    agent = await _running_backup(gw)
    key = await gw.key_of("acct-a")
    await gw.upload(agent, "job-1", [b"one", b"two", b"three"])
    entries = [
        file_entry("etc/b.conf", key, [b"two", b"three"]),
        dir_entry("etc"),
        file_entry("a.txt", key, [b"one"]),
        dir_entry(""),
        common_pb2.FileEntry(path="etc/link", type=common_pb2.ENTRY_TYPE_SYMLINK, link_target="b.conf"),
    ]
    committed_at = gw.clock.now()
    response = await gw.commit(agent, "job-1", entries, mount_point="/")
    assert (response.file_count, response.total_bytes) == (2, 11)

    [event] = gw.store.events(events.POINT_CREATED)
    assert event.point_id == response.point_id
    assert (event.account_id, event.instance_id, event.job_id) == ("acct-a", "i-1", "job-1")
    assert event.filesystem.mount_point == "/" and event.filesystem.capacity_bytes == 100 << 30
    assert event.manifest_key == f"manifests/acct-a/{response.point_id}"
    assert (event.file_count, event.total_bytes) == (2, 11)
    assert from_timestamp(event.version_created_at) == committed_at
    assert from_timestamp(event.retain_until) == committed_at + dt.timedelta(days=31)
    assert event.instance_capacity_bytes == 140 << 30
    assert event.version_id and event.meta.event_id and event.meta.producer == "agent-gateway"

    stored = await gw.point_manifest(response.point_id)
    assert [e.path for e in decode_manifest(stored)] == ["", "a.txt", "etc", "etc/b.conf", "etc/link"]
    info = await gw.objects.stat(event.manifest_key)
    assert info.retain_until == committed_at + dt.timedelta(days=31)


async def test_points_of_one_job_share_a_version_and_retries_are_idempotent(gw: GatewayHarness) -> None:
    agent = await _running_backup(gw)
    key = await gw.key_of("acct-a")
    await gw.upload(agent, "job-1", [b"x"])
    first = await gw.commit(agent, "job-1", [file_entry("x", key, [b"x"])], mount_point="/")
    gw.clock.advance(minutes=5)
    second = await gw.commit(agent, "job-1", [file_entry("y", key, [b"x"])], mount_point="/data")
    retry = await gw.commit(agent, "job-1", [file_entry("x", key, [b"x"])], mount_point="/")
    assert retry.point_id == first.point_id
    one, two = gw.store.events(events.POINT_CREATED)
    assert (one.point_id, two.point_id) == (first.point_id, second.point_id)
    assert one.version_id == two.version_id
    assert one.version_created_at == two.version_created_at
    # The job's final report carries the version id.
    call = gw.stub.Connect(metadata=agent.md)
    await call.write(
        gateway_pb2.AgentReport(finished=gateway_pb2.JobFinished(job_id="job-1", status=common_pb2.JOB_STATUS_COMPLETE))
    )
    for _ in range(200):
        if gw.store.events(events.JOB_UPDATED):
            break
        await asyncio.sleep(0.01)
    [finished] = gw.store.events(events.JOB_UPDATED)
    assert finished.version_id == one.version_id
    call.cancel()


async def test_commit_with_a_missing_chunk_is_refused(gw: GatewayHarness) -> None:
    agent = await _running_backup(gw)
    key = await gw.key_of("acct-a")
    await gw.upload(agent, "job-1", [b"present"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.commit(agent, "job-1", [file_entry("f", key, [b"present", b"never uploaded"])])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert chunk_id(key, b"never uploaded").hex() in (err.value.details() or "")
    assert chunk_id(key, b"present").hex() not in (err.value.details() or "")
    assert gw.store.events(events.POINT_CREATED) == []
    assert [k for k in gw.objects._versions if k.startswith("manifests/")] == []


async def test_chunks_of_another_account_do_not_satisfy_a_commit(gw: GatewayHarness) -> None:
    agent = await _running_backup(gw)
    other = await gw.enrolled_agent("i-b", "acct-b")
    await gw.request_backup(other, "job-b")
    key_a = await gw.key_of("acct-a")
    await gw.upload(agent, "job-1", [b"shared"])
    # Bob references Alice's chunk id in his point: refused, the id is unknown in his account.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.commit(other, "job-b", [file_entry("stolen", key_a, [b"shared"])])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("path", ["/abs", "a/../b", "a//b", "./a", "a/", "a\x00b"])
async def test_invalid_paths_are_refused(gw: GatewayHarness, path: str) -> None:
    agent = await _running_backup(gw)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.commit(agent, "job-1", [dir_entry(path)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_duplicate_paths_are_refused(gw: GatewayHarness) -> None:
    agent = await _running_backup(gw)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.commit(agent, "job-1", [dir_entry("a"), dir_entry("a")])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "duplicate" in (err.value.details() or "")


async def test_header_must_come_first(gw: GatewayHarness) -> None:
    agent = await _running_backup(gw)
    batch = gateway_pb2.CommitPointRequest(entries=gateway_pb2.EntryBatch(entries=[dir_entry("a")]))
    from gateway_helpers import aiter_of

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.CommitPoint(aiter_of([batch]), metadata=agent.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_old_packs_referenced_by_a_new_point_get_their_lock_extended(gw: GatewayHarness) -> None:
    agent = await _running_backup(gw)
    key = await gw.key_of("acct-a")
    await gw.upload(agent, "job-1", [b"old data"])
    [pack_key] = [k for k in gw.objects._versions if k.startswith("packs/")]
    first_lock = (await gw.objects.stat(pack_key)).retain_until
    assert first_lock is not None
    await gw.commit(agent, "job-1", [file_entry("f", key, [b"old data"])])
    assert (await gw.objects.stat(pack_key)).retain_until == first_lock  # fresh pack: no extension needed

    gw.clock.advance(dt.timedelta(days=20).total_seconds())
    await gw.request_backup(agent, "job-2")
    second = await gw.commit(agent, "job-2", [file_entry("f", key, [b"old data"])])
    extended = (await gw.objects.stat(pack_key)).retain_until
    assert extended == gw.clock.now() + dt.timedelta(days=31)
    # The manifest's segments (format version 2) are in a pack of their own, written by the first
    # commit and referenced by the second (same entries, same segment): its lock is extended too.
    [segments] = await gw.segment_packs(second.point_id)
    [pack] = [p for p in gw.store.state.packs.values() if p.object_key == pack_key]
    assert {p.pack_id for p in gw.store.state.packs.values()} == {pack.pack_id, segments}
    assert pack.retain_until == extended
    assert gw.store.state.packs[segments].retain_until == extended
