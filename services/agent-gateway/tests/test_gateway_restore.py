"""Restore reads: only the delivered restore job's point, only the account's chunks, filtered manifests."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import zstandard
from gateway_helpers import Agent, GatewayHarness, chunk_id, dir_entry, file_entry
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_platform import events


async def _backed_up(gw: GatewayHarness) -> tuple[Agent, str]:
    """Instance i-1 of acct-a with one committed point; returns the agent and the point id."""
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    await gw.upload(agent, "job-1", [b"alpha", b"beta", b"gamma"])
    entries = [
        dir_entry(""),
        dir_entry("etc"),
        file_entry("etc/a.conf", key, [b"alpha"]),
        file_entry("etc.txt", key, [b"beta"]),
        dir_entry("home"),
        dir_entry("home/u"),
        file_entry("home/u/notes", key, [b"gamma", b"alpha"]),
        dir_entry("home/u/cache"),
        file_entry("home/u/cache/x", key, [b"beta"]),
    ]
    response = await gw.commit(agent, "job-1", entries)
    return agent, response.point_id


async def _deliver(gw: GatewayHarness, agent: Agent, restore_job_id: str) -> gateway_pb2.AgentCommand:
    call = gw.stub.Connect(metadata=agent.md)
    try:
        while True:  # the unfinished backup job may come first
            command = await asyncio.wait_for(call.read(), 5)
            assert isinstance(command, gateway_pb2.AgentCommand)
            if command.run_restore.restore_job_id == restore_job_id:
                return command
    finally:
        call.cancel()


async def _manifest(gw: GatewayHarness, agent: Agent, request: gateway_pb2.ReadManifestRequest) -> list[str]:
    paths: list[str] = []
    async for response in gw.stub.ReadManifest(request, metadata=agent.md):
        paths.extend(e.path for e in response.entries)
    return paths


async def test_restore_job_reads_its_point_with_filters(gw: GatewayHarness) -> None:
    agent, point_id = await _backed_up(gw)
    await gw.request_restore(
        agent, "r-1", point_id, include_paths=["home/u"], conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE
    )
    command = await _deliver(gw, agent, "r-1")
    assert command.run_restore.restore_job_id == "r-1"
    assert command.run_restore.point_id == point_id
    assert command.run_restore.conflict_policy == gateway_pb2.CONFLICT_POLICY_OVERWRITE

    everything = await _manifest(gw, agent, gateway_pb2.ReadManifestRequest(restore_job_id="r-1"))
    assert len(everything) == 9
    subtree = await _manifest(
        gw,
        agent,
        gateway_pb2.ReadManifestRequest(
            restore_job_id="r-1", point_id=point_id, include_paths=["/home/u/"], exclude_paths=["home/u/cache"]
        ),
    )
    assert subtree == ["home/u", "home/u/notes"]
    # "etc" includes its subtree but not the sibling file "etc.txt".
    assert await _manifest(gw, agent, gateway_pb2.ReadManifestRequest(restore_job_id="r-1", include_paths=["etc"])) == [
        "etc",
        "etc/a.conf",
    ]

    key = await gw.key_of("acct-a")
    ids = [chunk_id(key, b"gamma"), chunk_id(key, b"alpha"), chunk_id(key, b"gamma")]
    got = [
        (r.chunk_id, r.data)
        async for r in gw.stub.ReadChunks(
            gateway_pb2.ReadChunksRequest(restore_job_id="r-1", chunk_ids=ids), metadata=agent.md
        )
    ]
    assert got == [(ids[0], b"gamma"), (ids[1], b"alpha"), (ids[2], b"gamma")]
    # An agent that decodes compression itself gets each chunk as stored: decrypted, still zstd.
    sent = [
        r
        async for r in gw.stub.ReadChunks(
            gateway_pb2.ReadChunksRequest(restore_job_id="r-1", chunk_ids=ids, accept_compressed=True),
            metadata=agent.md,
        )
    ]
    decoded = [
        (r.chunk_id, zstandard.decompress(r.data) if r.compression == gateway_pb2.CHUNK_COMPRESSION_ZSTD else r.data)
        for r in sent
    ]
    assert decoded == [(ids[0], b"gamma"), (ids[1], b"alpha"), (ids[2], b"gamma")]
    assert [r.raw_length for r in sent] == [5, 5, 5]


async def test_another_instance_of_the_account_can_restore_the_point(gw: GatewayHarness) -> None:
    _, point_id = await _backed_up(gw)
    target = await gw.enrolled_agent("i-2", "acct-a")
    await gw.request_restore(target, "r-1", point_id, source_instance_id="i-1")
    await _deliver(gw, target, "r-1")
    assert "etc/a.conf" in await _manifest(gw, target, gateway_pb2.ReadManifestRequest(restore_job_id="r-1"))


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:  # type: ignore[attr-defined]
            pass
    return err.value.code()


async def test_reads_need_a_delivered_restore_job(gw: GatewayHarness) -> None:
    agent, point_id = await _backed_up(gw)
    # No restore job at all: a backup job id does not open the point.
    request = gateway_pb2.ReadManifestRequest(restore_job_id="job-1", point_id=point_id)
    assert await _code(gw.stub.ReadManifest(request, metadata=agent.md)) == grpc.StatusCode.FAILED_PRECONDITION
    # Requested but not yet delivered to the agent.
    await gw.request_restore(agent, "r-1", point_id)
    request = gateway_pb2.ReadManifestRequest(restore_job_id="r-1")
    assert await _code(gw.stub.ReadManifest(request, metadata=agent.md)) == grpc.StatusCode.FAILED_PRECONDITION
    await _deliver(gw, agent, "r-1")
    assert await _manifest(gw, agent, request)


async def test_restore_job_cannot_read_another_point(gw: GatewayHarness) -> None:
    agent, point_id = await _backed_up(gw)
    await gw.request_backup(agent, "job-2")
    key = await gw.key_of("acct-a")
    other_point = (
        await gw.commit(agent, "job-2", [file_entry("secret", key, [b"beta"])], mount_point="/data")
    ).point_id
    await gw.request_restore(agent, "r-1", point_id)
    await _deliver(gw, agent, "r-1")
    request = gateway_pb2.ReadManifestRequest(restore_job_id="r-1", point_id=other_point)
    assert await _code(gw.stub.ReadManifest(request, metadata=agent.md)) == grpc.StatusCode.PERMISSION_DENIED


async def test_other_instances_and_accounts_cannot_use_the_restore_job(gw: GatewayHarness) -> None:
    agent, point_id = await _backed_up(gw)
    await gw.request_restore(agent, "r-1", point_id)
    await _deliver(gw, agent, "r-1")
    key = await gw.key_of("acct-a")
    sibling = await gw.enrolled_agent("i-2", "acct-a")
    stranger = await gw.enrolled_agent("i-x", "acct-b")
    for intruder in (sibling, stranger):
        manifest = gw.stub.ReadManifest(gateway_pb2.ReadManifestRequest(restore_job_id="r-1"), metadata=intruder.md)
        assert await _code(manifest) == grpc.StatusCode.PERMISSION_DENIED
        chunks = gw.stub.ReadChunks(
            gateway_pb2.ReadChunksRequest(restore_job_id="r-1", chunk_ids=[chunk_id(key, b"alpha")]),
            metadata=intruder.md,
        )
        assert await _code(chunks) == grpc.StatusCode.PERMISSION_DENIED


async def test_account_b_restore_job_cannot_read_account_a_chunks(gw: GatewayHarness) -> None:
    _, _ = await _backed_up(gw)
    key_a = await gw.key_of("acct-a")
    bob = await gw.enrolled_agent("i-b", "acct-b")
    await gw.request_backup(bob, "job-b")
    key_b = await gw.key_of("acct-b")
    await gw.upload(bob, "job-b", [b"bob"])
    bob_point = (await gw.commit(bob, "job-b", [file_entry("bob", key_b, [b"bob"])])).point_id
    await gw.request_restore(bob, "r-b", bob_point)
    await _deliver(gw, bob, "r-b")
    chunks = gw.stub.ReadChunks(
        gateway_pb2.ReadChunksRequest(restore_job_id="r-b", chunk_ids=[chunk_id(key_a, b"alpha")]), metadata=bob.md
    )
    assert await _code(chunks) == grpc.StatusCode.NOT_FOUND


async def test_a_restore_of_a_point_of_another_account_is_refused(gw: GatewayHarness) -> None:
    _, point_id = await _backed_up(gw)
    bob = await gw.enrolled_agent("i-b", "acct-b")
    await gw.request_restore(bob, "r-b", point_id)
    await _deliver(gw, bob, "r-b")
    manifest = gw.stub.ReadManifest(gateway_pb2.ReadManifestRequest(restore_job_id="r-b"), metadata=bob.md)
    assert await _code(manifest) == grpc.StatusCode.PERMISSION_DENIED


async def test_finished_restore_job_can_no_longer_read(gw: GatewayHarness) -> None:
    agent, point_id = await _backed_up(gw)
    await gw.request_restore(agent, "r-1", point_id)
    await _deliver(gw, agent, "r-1")
    call = gw.stub.Connect(metadata=agent.md)
    await call.write(
        gateway_pb2.AgentReport(finished=gateway_pb2.JobFinished(job_id="r-1", status=common_pb2.JOB_STATUS_COMPLETE))
    )
    for _ in range(200):
        if gw.store.state.jobs["r-1"].state == "finished":
            break
        await asyncio.sleep(0.01)
    call.cancel()
    manifest = gw.stub.ReadManifest(gateway_pb2.ReadManifestRequest(restore_job_id="r-1"), metadata=agent.md)
    assert await _code(manifest) == grpc.StatusCode.FAILED_PRECONDITION
    [update] = gw.store.events(events.RESTORE_UPDATED)
    assert (update.restore_job_id, update.target_instance_id, update.status) == (
        "r-1",
        "i-1",
        common_pb2.JOB_STATUS_COMPLETE,
    )


async def test_a_partial_restore_passes_its_failed_files_on_bounded(gw: GatewayHarness) -> None:
    agent, point_id = await _backed_up(gw)
    await gw.request_restore(agent, "r-1", point_id)
    await _deliver(gw, agent, "r-1")
    failed = [common_pb2.FileError(path=f"dir/f{n}", reason="chunk ab of this file is damaged") for n in range(1500)]
    call = gw.stub.Connect(metadata=agent.md)
    await call.write(
        gateway_pb2.AgentReport(
            finished=gateway_pb2.JobFinished(
                job_id="r-1",
                status=common_pb2.JOB_STATUS_PARTIAL_COMPLETE,
                stats=common_pb2.JobStats(files_restored=3, files_failed=1500),
                failed_files=failed,
            )
        )
    )
    for _ in range(200):
        if gw.store.events(events.RESTORE_UPDATED):
            break
        await asyncio.sleep(0.01)
    call.cancel()
    [update] = gw.store.events(events.RESTORE_UPDATED)
    assert update.status == common_pb2.JOB_STATUS_PARTIAL_COMPLETE and update.stats.files_failed == 1500
    assert list(update.failed_files) == failed[:1000]
