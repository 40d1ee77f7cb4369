"""Encryption at rest end to end through the gRPC API: what an attacker with write access to the
bucket (or to rows of the chunk index) can and cannot achieve. Every case must end in a clear
error, never in wrong bytes handed to a restore."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import grpc
import pytest
import zstandard
from gateway_helpers import Agent, GatewayHarness, aiter_of, chunk_id, file_entry, upload_request
from strongroom.agent.v1 import gateway_pb2
from strongroom_gateway.packfile import decode_index


def _pack_keys(gw: GatewayHarness, account_id: str) -> list[str]:
    return [k for k in gw.objects._versions if k.startswith(f"packs/{account_id}/")]


def _tamper(gw: GatewayHarness, object_key: str, data: bytes) -> None:
    """Replace an object's bytes behind the store's back (Object Lock would refuse; a broken disk would not)."""
    gw.objects.damage(object_key, data)


async def _restore_job(gw: GatewayHarness, agent: Agent, point_id: str, job_id: str = "r-1") -> str:
    await gw.request_restore(agent, job_id, point_id)
    call = gw.stub.Connect(metadata=agent.md)
    try:
        while True:
            command = await asyncio.wait_for(call.read(), 5)
            assert isinstance(command, gateway_pb2.AgentCommand)
            if command.run_restore.restore_job_id == job_id:
                return job_id
    finally:
        call.cancel()


async def _backup(gw: GatewayHarness, instance: str, account: str, contents: list[bytes]) -> tuple[Agent, str]:
    agent = await gw.enrolled_agent(instance, account)
    await gw.request_backup(agent, f"job-{instance}")
    await gw.upload(agent, f"job-{instance}", contents, compress=False)
    key = await gw.key_of(account)
    response = await gw.commit(agent, f"job-{instance}", [file_entry("f", key, contents)])
    return agent, response.point_id


async def _read(
    gw: GatewayHarness, agent: Agent, job_id: str, ids: list[bytes], *, compressed: bool = False
) -> list[bytes]:
    """The contents of ``ids``; with ``compressed`` the gateway may send them zstd-compressed (decoded here)."""
    request = gateway_pb2.ReadChunksRequest(restore_job_id=job_id, chunk_ids=ids, accept_compressed=compressed)
    contents = []
    async for r in gw.stub.ReadChunks(request, metadata=agent.md):
        if r.compression == gateway_pb2.CHUNK_COMPRESSION_ZSTD:
            assert compressed
            contents.append(zstandard.decompress(r.data))
        else:
            contents.append(r.data)
        assert len(contents[-1]) == r.raw_length
    return contents


async def test_restore_reads_back_encrypted_chunks(gw: GatewayHarness) -> None:
    contents = [os.urandom(3000), b"plain text that must not be visible in the bucket" * 10]
    agent, point_id = await _backup(gw, "i-1", "acct-a", contents)
    for object_key in _pack_keys(gw, "acct-a"):
        assert contents[1][:40] not in (await gw.objects.get(object_key))
    job = await _restore_job(gw, agent, point_id)
    key = await gw.key_of("acct-a")
    assert await _read(gw, agent, job, [chunk_id(key, c) for c in contents]) == contents


async def test_an_agent_that_decodes_gets_compressed_chunks_as_stored(gw: GatewayHarness) -> None:
    text = b"compressible restore content " * 2000
    agent = await gw.enrolled_agent("i-1", "acct-a")
    await gw.request_backup(agent, "job-i-1")
    await gw.upload(agent, "job-i-1", [text], compress=True)
    key = await gw.key_of("acct-a")
    point_id = (await gw.commit(agent, "job-i-1", [file_entry("f", key, [text])])).point_id
    job = await _restore_job(gw, agent, point_id)
    ids = [chunk_id(await gw.key_of("acct-a"), text)]
    [plain] = [
        r
        async for r in gw.stub.ReadChunks(
            gateway_pb2.ReadChunksRequest(restore_job_id=job, chunk_ids=ids), metadata=agent.md
        )
    ]
    assert (plain.data, plain.compression, plain.raw_length) == (text, gateway_pb2.CHUNK_COMPRESSION_NONE, len(text))
    request = gateway_pb2.ReadChunksRequest(restore_job_id=job, chunk_ids=ids, accept_compressed=True)
    [sent] = [r async for r in gw.stub.ReadChunks(request, metadata=agent.md)]
    assert sent.compression == gateway_pb2.CHUNK_COMPRESSION_ZSTD and len(sent.data) < len(text) // 10
    assert zstandard.decompress(sent.data) == text and sent.raw_length == len(text)


@pytest.mark.parametrize("compressed", [False, True], ids=["decoded", "sent-compressed"])
async def test_aead_tamper_flipped_byte_in_a_stored_pack_fails_the_restore_clearly(
    gw: GatewayHarness, compressed: bool
) -> None:
    contents = [os.urandom(5000), os.urandom(5000)]
    agent, point_id = await _backup(gw, "i-1", "acct-a", contents)
    key = await gw.key_of("acct-a")
    target = gw.store.state.chunks[("acct-a", chunk_id(key, contents[1]))]
    data = bytearray(await gw.objects.get(target.object_key))
    data[target.offset + 100] ^= 0x01  # inside the ciphertext of the second chunk
    _tamper(gw, target.object_key, bytes(data))
    job = await _restore_job(gw, agent, point_id)

    # The untouched chunk still restores; the flipped one is refused, never returned altered.
    assert await _read(gw, agent, job, [chunk_id(key, contents[0])], compressed=compressed) == [contents[0]]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _read(gw, agent, job, [chunk_id(key, contents[1])], compressed=compressed)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "corrupt" in (err.value.details() or "") and "authentication failed" in (err.value.details() or "")


async def test_blob_swap_within_an_account_is_detected(gw: GatewayHarness) -> None:
    first, second = os.urandom(4000), os.urandom(4000)  # same length: the swap keeps every offset valid
    agent, point_id = await _backup(gw, "i-1", "acct-a", [first, second])
    key = await gw.key_of("acct-a")
    a = gw.store.state.chunks[("acct-a", chunk_id(key, first))]
    b = gw.store.state.chunks[("acct-a", chunk_id(key, second))]
    assert a.object_key == b.object_key and a.length == b.length
    data = bytearray(await gw.objects.get(a.object_key))
    blob_a, blob_b = bytes(data[a.offset : a.offset + a.length]), bytes(data[b.offset : b.offset + b.length])
    data[a.offset : a.offset + a.length], data[b.offset : b.offset + b.length] = blob_b, blob_a
    _tamper(gw, a.object_key, bytes(data))
    job = await _restore_job(gw, agent, point_id)
    for content in (first, second):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _read(gw, agent, job, [chunk_id(key, content)])
        assert "authentication failed" in (err.value.details() or "")


async def test_blob_moved_between_accounts_is_detected(gw: GatewayHarness) -> None:
    secret = os.urandom(4000)
    alice, _ = await _backup(gw, "i-a", "acct-a", [secret])
    bob, bob_point = await _backup(gw, "i-b", "acct-b", [os.urandom(4000)])
    key_a, key_b = await gw.key_of("acct-a"), await gw.key_of("acct-b")
    alice_row = gw.store.state.chunks[("acct-a", chunk_id(key_a, secret))]
    # Someone with write access to the index makes Bob's account point at Alice's blob, under
    # Bob's id for the same content: the blob was sealed for another account, so it does not open.
    bob_id = chunk_id(key_b, secret)
    gw.store.state.chunks[("acct-b", bob_id)] = dataclasses.replace(alice_row, chunk_id=bob_id)
    job = await _restore_job(gw, bob, bob_point)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _read(gw, bob, job, [bob_id])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "authentication failed" in (err.value.details() or "")
    # Alice's id under Bob's account does not open either (other data key, other AAD).
    gw.store.state.chunks[("acct-b", alice_row.chunk_id)] = alice_row
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _read(gw, bob, job, [alice_row.chunk_id])
    assert "authentication failed" in (err.value.details() or "")
    assert alice.account_id == "acct-a"


async def test_cross_account_dedup_is_impossible(gw: GatewayHarness) -> None:
    """Same content in two accounts: two ids, two stored copies, and B can neither reference nor read A's."""
    shared = b"the same file content in two accounts" * 100
    alice, _ = await _backup(gw, "i-a", "acct-a", [shared])
    bob = await gw.enrolled_agent("i-b", "acct-b")
    await gw.request_backup(bob, "job-b")
    key_a, key_b = await gw.key_of("acct-a"), await gw.key_of("acct-b")
    id_a, id_b = chunk_id(key_a, shared), chunk_id(key_b, shared)
    assert id_a != id_b
    # B asking for A's id is told it is missing; B uploading under A's id is refused.
    missing = await gw.stub.FindMissingChunks(
        gateway_pb2.FindMissingChunksRequest(job_id="job-b", chunk_ids=[id_a, id_b]), metadata=bob.md
    )
    assert list(missing.missing_chunk_ids) == [id_a, id_b]
    forged = upload_request("job-b", key_b, shared)
    forged.chunk_id = id_a
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.UploadChunks(aiter_of([forged]), metadata=bob.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # B cannot commit a point that references A's chunk without uploading it.
    entry = file_entry("stolen", key_a, [shared])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.commit(bob, "job-b", [entry])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # B's own upload of the content is a separate copy in B's packs, sealed with B's key.
    await gw.upload(bob, "job-b", [shared])
    assert ("acct-b", id_b) in gw.store.state.chunks and ("acct-b", id_a) not in gw.store.state.chunks
    [bob_pack] = _pack_keys(gw, "acct-b")
    with pytest.raises(ValueError, match="authentication failed"):
        decode_index(await gw.objects.get(bob_pack), await gw.data_key("acct-a"))
    # B's restore cannot read A's id.
    bob_point = (await gw.commit(bob, "job-b", [file_entry("mine", key_b, [shared])])).point_id
    job = await _restore_job(gw, bob, bob_point)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _read(gw, bob, job, [id_a])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert alice.account_id == "acct-a"


async def test_manifest_is_sealed_and_a_tampered_or_moved_manifest_is_refused(gw: GatewayHarness) -> None:
    agent, first = await _backup(gw, "i-1", "acct-a", [b"one"])
    await gw.request_backup(agent, "job-2")
    key = await gw.key_of("acct-a")
    second = (await gw.commit(agent, "job-2", [file_entry("secret-name.txt", key, [b"one"])])).point_id
    sealed_second = await gw.objects.get(f"manifests/acct-a/{second}")
    assert sealed_second[:5] == b"SRME\x01" and b"secret-name" not in sealed_second

    # The second point's manifest copied over the first's object: sealed for another point id.
    _tamper(gw, f"manifests/acct-a/{first}", sealed_second)
    await _restore_job(gw, agent, first, "r-1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in gw.stub.ReadManifest(gateway_pb2.ReadManifestRequest(restore_job_id="r-1"), metadata=agent.md):
            pass
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "authentication failed" in (err.value.details() or "")

    # A flipped byte in the second point's own manifest.
    flipped = bytearray(sealed_second)
    flipped[-1] ^= 0x80
    _tamper(gw, f"manifests/acct-a/{second}", bytes(flipped))
    await _restore_job(gw, agent, second, "r-2")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in gw.stub.ReadManifest(gateway_pb2.ReadManifestRequest(restore_job_id="r-2"), metadata=agent.md):
            pass
    assert "authentication failed" in (err.value.details() or "")


async def test_data_key_is_stored_only_wrapped(gw: GatewayHarness) -> None:
    await _backup(gw, "i-1", "acct-a", [b"x"])
    stored = gw.store.state.data_keys["acct-a"]
    raw = gw.keyring.unwrap("acct-a", stored.master_key_id, stored.wrapped_key)
    assert stored.master_key_id == "test-master"
    assert raw not in stored.wrapped_key and len(stored.wrapped_key) == 60
    # The wrapping is bound to the account: another account's row cannot carry it.
    with pytest.raises(RuntimeError, match="does not unwrap"):
        gw.keyring.unwrap("acct-b", stored.master_key_id, stored.wrapped_key)
