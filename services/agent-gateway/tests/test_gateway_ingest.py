"""UploadChunks and FindMissingChunks: verification, packing, durability order, account isolation."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gateway_helpers import GatewayHarness, aiter_of, chunk_id, upload_request
from strongroom.agent.v1 import gateway_pb2
from strongroom_gateway.packfile import COMPRESSION_NONE, COMPRESSION_ZSTD, decode_index
from strongroom_platform.testing import FakeClock


def pack_keys(gw: GatewayHarness) -> list[str]:
    return [k for k in gw.objects._versions if k.startswith("packs/")]


async def test_chunks_are_verified_and_packed_into_one_locked_object(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    contents = [os.urandom(1000) for _ in range(20)] + [b"z" * 5000]
    response = await gw.upload(agent, "job-1", contents[:10], compress=True)
    assert (response.chunks_stored, response.chunks_already_present) == (10, 0)
    response = await gw.upload(agent, "job-1", contents[10:], compress=False)
    assert response.chunks_stored == 11

    keys = pack_keys(gw)
    assert len(keys) == 2  # one object per call here, never one per chunk
    key = await gw.key_of("acct-a")
    data_key = await gw.data_key("acct-a")
    for object_key in keys:
        pack_id = object_key.rsplit("/", 1)[1]
        assert object_key == f"packs/acct-a/{pack_id[:2]}/{pack_id}"
        info = await gw.objects.stat(object_key)
        assert info.retain_until == gw.clock.now() + dt.timedelta(days=31)
        data = await gw.objects.get(object_key)
        assert data[:5] == b"SRPK\x02"  # encrypted format
        for entry in decode_index(data, data_key):
            row = gw.store.state.chunks[("acct-a", entry.chunk_id)]
            assert (row.pack_id, row.offset, row.length) == (pack_id, entry.offset, entry.length)
    compressions = {row.compression for row in gw.store.state.chunks.values()}
    assert compressions == {COMPRESSION_ZSTD, COMPRESSION_NONE}
    assert set(gw.store.state.chunks) == {("acct-a", chunk_id(key, c)) for c in contents}


async def test_packs_are_split_by_size(clock: FakeClock) -> None:
    gw = GatewayHarness(clock, pack_target_bytes=10_000)
    await gw.start()
    try:
        agent = await gw.enrolled_agent("i-1")
        await gw.request_backup(agent, "job-1")
        await gw.upload(agent, "job-1", [os.urandom(3000) for _ in range(10)], compress=False)
        keys = pack_keys(gw)
        assert len(keys) == 3  # 4 + 4 + 2 chunks
        data_key = await gw.data_key("acct-a")
        sizes = sorted([len(decode_index(await gw.objects.get(k), data_key)) for k in keys])
        assert sizes == [2, 4, 4]
        assert len(gw.store.state.chunks) == 10
    finally:
        await gw.stop()


async def test_chunk_id_mismatch_is_refused_and_nothing_stored(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    forged = upload_request("job-1", key, b"the real content")
    forged.chunk_id = chunk_id(key, b"some other content")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.UploadChunks(aiter_of([forged]), metadata=agent.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mismatch" in (err.value.details() or "")
    assert pack_keys(gw) == []
    assert gw.store.state.chunks == {}


def batched(job_id: str, requests: list[gateway_pb2.UploadChunkRequest]) -> gateway_pb2.UploadChunkRequest:
    """The one-message form of ``requests``: every chunk in ``chunks``."""
    return gateway_pb2.UploadChunkRequest(
        job_id=job_id,
        chunks=[
            gateway_pb2.UploadedChunk(
                chunk_id=r.chunk_id, compression=r.compression, raw_length=r.raw_length, payload=r.payload
            )
            for r in requests
        ],
    )


async def test_many_chunks_in_one_message_and_both_forms_in_one_stream(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    contents = [os.urandom(700) for _ in range(300)]  # more than one verification batch
    single = [upload_request("job-1", key, c) for c in contents]
    stream = [batched("job-1", single[:250]), single[250], batched("job-1", single[251:]), single[0]]
    response = await gw.stub.UploadChunks(aiter_of(stream), metadata=agent.md)
    assert (response.chunks_stored, response.chunks_already_present) == (300, 1)
    assert set(gw.store.state.chunks) == {("acct-a", chunk_id(key, c)) for c in contents}


async def test_a_forged_chunk_in_a_batch_is_refused_and_the_chunks_before_it_are_kept(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    good = [upload_request("job-1", key, f"good {i}".encode()) for i in range(3)]
    forged = upload_request("job-1", key, b"the real content")
    forged.chunk_id = chunk_id(key, b"some other content")
    after = upload_request("job-1", key, b"after the forged one")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.UploadChunks(aiter_of([batched("job-1", [*good, forged, after])]), metadata=agent.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert forged.chunk_id.hex() in (err.value.details() or "")
    assert set(gw.store.state.chunks) == {("acct-a", r.chunk_id) for r in good}


async def test_batches_verified_while_the_next_is_received_keep_order_and_refusal(
    gw: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verification of a batch overlaps the receipt of the next (ADR 0066): every chunk of a clean call is
    stored once and counted; a forged chunk in an earlier batch stops the call before any later batch is stored."""
    from strongroom_gateway import ingest

    monkeypatch.setattr(ingest, "_VERIFY_BATCH_CHUNKS", 4)
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    contents = [f"chunk {i}".encode() for i in range(10)]  # batches of 4, 4 and 2
    stream = [upload_request("job-1", key, c) for c in [*contents, contents[1]]]
    response = await gw.stub.UploadChunks(aiter_of(stream), metadata=agent.md)
    assert (response.chunks_stored, response.chunks_already_present) == (10, 1)
    assert set(gw.store.state.chunks) == {("acct-a", chunk_id(key, c)) for c in contents}

    before = set(gw.store.state.chunks)
    good = [upload_request("job-1", key, f"more {i}".encode()) for i in range(11)]
    forged = upload_request("job-1", key, b"the real content")
    forged.chunk_id = chunk_id(key, b"some other content")
    stream = [*good[:3], forged, *good[3:]]  # the forged chunk ends the first batch; two batches follow
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.UploadChunks(aiter_of(stream), metadata=agent.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert forged.chunk_id.hex() in (err.value.details() or "")
    assert set(gw.store.state.chunks) - before == {("acct-a", r.chunk_id) for r in good[:3]}


async def test_a_message_with_both_forms_is_refused(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    request = batched("job-1", [upload_request("job-1", key, b"one")])
    request.chunk_id = chunk_id(key, b"two")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.UploadChunks(aiter_of([request]), metadata=agent.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not both" in (err.value.details() or "")
    assert gw.store.state.chunks == {}


async def test_wrong_raw_length_is_refused(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    request = upload_request("job-1", await gw.key_of("acct-a"), b"content")
    request.raw_length = 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.UploadChunks(aiter_of([request]), metadata=agent.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert gw.store.state.chunks == {}


async def test_repeated_upload_is_reported_present_and_not_stored_twice(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    await gw.upload(agent, "job-1", [b"a" * 100, b"b" * 100])
    again = await gw.upload(agent, "job-1", [b"a" * 100, b"b" * 100, b"b" * 100, b"c" * 100])
    assert (again.chunks_stored, again.chunks_already_present) == (1, 3)
    assert len(gw.store.state.chunks) == 3


async def test_find_missing_reports_only_what_the_account_lacks(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    await gw.upload(agent, "job-1", [b"stored"])
    stored, new = chunk_id(key, b"stored"), chunk_id(key, b"new")
    response = await gw.stub.FindMissingChunks(
        gateway_pb2.FindMissingChunksRequest(job_id="job-1", chunk_ids=[stored, new, new]), metadata=agent.md
    )
    assert list(response.missing_chunk_ids) == [new]


async def test_account_b_cannot_learn_or_read_account_a_chunks(gw: GatewayHarness) -> None:
    alice = await gw.enrolled_agent("i-a", "acct-a")
    bob = await gw.enrolled_agent("i-b", "acct-b")
    await gw.request_backup(alice, "job-a")
    await gw.request_backup(bob, "job-b")
    key_a, key_b = await gw.key_of("acct-a"), await gw.key_of("acct-b")
    assert key_a != key_b
    secret = b"alice's secret document"
    await gw.upload(alice, "job-a", [secret])
    alice_id = chunk_id(key_a, secret)

    # Bob asking about Alice's id is told it is missing: existence does not leak across accounts.
    response = await gw.stub.FindMissingChunks(
        gateway_pb2.FindMissingChunksRequest(job_id="job-b", chunk_ids=[alice_id]), metadata=bob.md
    )
    assert list(response.missing_chunk_ids) == [alice_id]
    # Bob cannot use Alice's job either.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.FindMissingChunks(
            gateway_pb2.FindMissingChunksRequest(job_id="job-a", chunk_ids=[alice_id]), metadata=bob.md
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The same content under Bob's key is a different chunk, stored separately.
    uploaded = await gw.upload(bob, "job-b", [secret])
    assert uploaded.chunks_stored == 1
    assert ("acct-b", chunk_id(key_b, secret)) in gw.store.state.chunks
    assert ("acct-b", alice_id) not in gw.store.state.chunks
    # Bob cannot smuggle Alice's id in with Alice's key-less content either: the id must verify under Bob's key.
    forged = upload_request("job-b", key_b, secret)
    forged.chunk_id = alice_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.UploadChunks(aiter_of([forged]), metadata=bob.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class _RecordingTx:
    """A transaction that records the names of the methods its users look up on it."""

    def __init__(self, tx: Any, calls: list[str]) -> None:
        self._tx, self._calls = tx, calls

    def __getattr__(self, name: str) -> Any:
        self._calls.append(name)
        return getattr(self._tx, name)


async def test_the_backup_calls_check_their_job_in_the_transaction_of_their_first_read(
    gw: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each transaction is four round trips to PostgreSQL: the job's check shares one (ADR 0079)."""
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    transactions: list[list[str]] = []
    real = gw.store.transaction

    @contextlib.asynccontextmanager
    async def transaction() -> AsyncIterator[_RecordingTx]:
        calls: list[str] = []
        transactions.append(calls)
        async with real() as tx:
            yield _RecordingTx(tx, calls)

    monkeypatch.setattr(gw.store, "transaction", transaction)
    request = gateway_pb2.FindMissingChunksRequest(job_id="job-1", chunk_ids=[chunk_id(key, b"x")])
    missing = await gw.stub.FindMissingChunks(request, metadata=agent.md)
    assert list(missing.missing_chunk_ids) == [chunk_id(key, b"x")]
    assert [t for t in transactions if "get_job" in t] == [["get_job", "find_chunks"]]
    transactions.clear()
    assert (await gw.upload(agent, "job-1", [b"x"])).chunks_stored == 1
    assert [t for t in transactions if "get_job" in t] == [["get_account", "get_job"]]
    # A stream without messages still needs its account, and nothing else.
    transactions.clear()
    assert await gw.stub.UploadChunks(aiter_of([]), metadata=agent.md) == gateway_pb2.UploadChunksResponse()
    assert [t for t in transactions if "get_account" in t] == [["get_account"]]


async def test_upload_for_a_finished_job_is_refused(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.upload(agent, "no-such-job", [b"x"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert gw.store.state.chunks == {}


async def test_an_upload_cancelled_while_waiting_to_write_its_pack_leaves_no_orphan(
    gw: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled gateway (bench/fleet.py's kill run): every pack-write slot busy, an upload waits for
    one to seal its pack, and the agent's deadline cancels it. The pack must stay open — not marked
    sealed and never written, holding its chunks for good: the agent's retry of the same chunks
    then waited for that pack until its own deadline, again and again, and the job never ended."""
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    real_put = gw.objects.put
    unblocked = asyncio.Event()

    async def slow_put(key: str, data: bytes, *, retain_until: dt.datetime | None = None, new_key: bool = False) -> str:
        if key.startswith("packs/"):
            await unblocked.wait()
        return await real_put(key, data, retain_until=retain_until, new_key=new_key)

    monkeypatch.setattr(gw.objects, "put", slow_put)
    # Two uploads take both write slots (max_concurrent_writes=2) and wait for their packs.
    busy = []
    for _ in range(2):
        busy.append(asyncio.ensure_future(gw.upload(agent, "job-1", [os.urandom(1000)])))
        await asyncio.sleep(0.3)
    contents = [os.urandom(1000) for _ in range(3)]
    waiting = asyncio.ensure_future(gw.upload(agent, "job-1", contents))
    await asyncio.sleep(0.5)  # it buffered its chunks and waits for a slot to seal its pack
    assert not waiting.done()
    waiting.cancel()  # the agent's deadline
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.2)
    unblocked.set()
    for upload in busy:
        assert (await asyncio.wait_for(upload, 10)).chunks_stored == 1
    # The agent's retry of the same chunks is answered, and the chunks are stored.
    retried = await asyncio.wait_for(gw.upload(agent, "job-1", contents), 10)
    assert retried.chunks_stored + retried.chunks_already_present == 3
    key = await gw.key_of("acct-a")
    assert {("acct-a", chunk_id(key, c)) for c in contents} <= set(gw.store.state.chunks)
