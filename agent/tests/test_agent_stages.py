"""The backup's chunk stages: the memory budget, compression into upload messages, freed pages."""

from __future__ import annotations

import asyncio

from strongroom.agent.v1 import gateway_pb2
from strongroom_agent.backup import Upload, upload_requests
from strongroom_agent.backup.stages import ByteBudget


async def test_the_memory_budget_grants_in_order_and_a_cancelled_wait_takes_nothing() -> None:
    budget = ByteBudget(100)
    assert await budget.acquire(60) == 60
    order: list[str] = []

    async def take(name: str, nbytes: int) -> None:
        await budget.acquire(nbytes)
        order.append(name)

    big = asyncio.create_task(take("big", 500))  # clamped to the capacity: waits for everything
    await asyncio.sleep(0)
    small = asyncio.create_task(take("small", 10))  # fits now, but waits behind "big" (first come)
    doomed = asyncio.create_task(take("doomed", 30))
    await asyncio.sleep(0)
    assert order == []
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)
    budget.release(60)
    await asyncio.wait_for(big, 1)
    assert order == ["big"]  # the cancelled waiter was skipped and holds nothing
    budget.release(100)
    await asyncio.wait_for(small, 1)
    assert order == ["big", "small"]
    assert await budget.acquire(90) == 90  # 10 + 90: the whole capacity, nothing leaked


def test_compress_group_builds_the_messages_of_its_compressed_chunks_and_drops_the_contents() -> None:
    import random

    from strongroom_agent.backup.stages import Chunk, compress_group
    from strongroom_agent.chunking import compress, decode_chunk

    rng = random.Random(5)
    contents = [rng.randbytes(3000), b"a" * 5000, rng.randbytes(900), b"b" * 40_000, rng.randbytes(2500)]
    chunks = [Chunk(bytes([i]) * 32, c, len(c) + i) for i, c in enumerate(contents)]
    outgoing = compress_group("job-9", chunks, 4000)
    expected = [Upload(bytes([i]) * 32, len(c), *compress(c), len(c) + i) for i, c in enumerate(contents)]
    assert outgoing.requests == upload_requests("job-9", expected, 4000)
    sent = [c for r in outgoing.requests for c in gateway_pb2.UploadChunkRequest.FromString(r).chunks]
    assert [decode_chunk(c.payload, c.compression, c.raw_length) for c in sent] == contents
    assert outgoing.chunks == 5 and outgoing.charge == sum(len(c) + i for i, c in enumerate(contents))
    assert outgoing.raw_bytes == sum(len(c) for c in contents)
    assert outgoing.wire_bytes == sum(len(r) for r in outgoing.requests)
    assert outgoing.payload_bytes == sum(len(u.payload) for u in expected)
    assert all(c.content == b"" for c in chunks)  # held once, as the serialized messages


def test_freed_pages_are_due_once_per_so_many_released_bytes() -> None:
    from strongroom_agent.memory import FreedPages

    calls: list[int] = []

    def trim() -> None:
        calls.append(1)

    freed = FreedPages(100, trim)
    due = [freed.released(n) for n in (60, 39, 1, 150, 0, 99, 1)]
    assert due == [None, None, trim, trim, None, None, trim]  # the trim itself when due
    assert FreedPages(100, None).released(1000) is None  # not glibc: never
    assert FreedPages(0, trim).released(1000) is None  # switched off
    assert calls == []  # released() only says when; the caller runs it


def test_freed_pages_are_kept_while_the_process_holds_no_more_than_the_floor() -> None:
    """Trims are due as often as before, but only taken above the floor (ADR 0074: trimmed pages fault again)."""
    from strongroom_agent.memory import FreedPages

    def trim() -> None:
        raise AssertionError("released() only says when; the caller runs it")

    resident = [100]
    freed = FreedPages(10, trim, floor_bytes=150, resident=lambda: resident[0])
    assert [freed.released(10) for _ in range(3)] == [None, None, None]  # due, but below the floor
    resident[0] = 150
    assert freed.released(10) is None  # at the floor: kept
    resident[0] = 151
    assert [freed.released(n) for n in (10, 5, 5)] == [trim, None, trim]  # above it: as often as before
    assert FreedPages(10, trim, floor_bytes=150).released(10) is trim  # no resident size known: no floor


def test_freed_pages_are_returned_between_steps_only_above_the_ceiling() -> None:
    """ADR 0077: between the pipeline's steps a trim is due whenever the process holds more than the ceiling."""
    from strongroom_agent.memory import FreedPages

    def trim() -> None:
        raise AssertionError("over_ceiling() only says when; the caller runs it")

    resident = [200]
    freed = FreedPages(10, trim, floor_bytes=100, ceiling_bytes=200, resident=lambda: resident[0])
    assert freed.over_ceiling() is None  # at the ceiling: kept
    resident[0] = 201
    assert freed.over_ceiling() is trim
    assert freed.released(5) is None  # the count started again with that trim
    assert freed.released(5) is trim  # above the floor, 10 released since: due as before
    assert FreedPages(10, trim, floor_bytes=100, resident=lambda: 10**9).over_ceiling() is None  # no ceiling
    assert FreedPages(10, None, ceiling_bytes=1, resident=lambda: 10**9).over_ceiling() is None  # not glibc
    assert FreedPages(10, trim, ceiling_bytes=1).over_ceiling() is None  # no resident size known


def test_resident_bytes_is_this_process_s() -> None:
    import os

    import pytest
    from strongroom_agent.memory import resident_bytes

    if not os.path.exists("/proc/self/statm"):
        pytest.skip("no procfs")
    before = resident_bytes()
    held = b"\x01" * (32 << 20)  # every page written
    assert resident_bytes() >= before + (24 << 20)
    del held


def test_malloc_trim_is_glibc_s() -> None:
    import os

    import pytest
    from strongroom_agent.memory import malloc_trim

    trim = malloc_trim()
    if not os.confstr("CS_GNU_LIBC_VERSION"):
        assert trim is None
        pytest.skip("not glibc")
    assert trim is not None
    assert trim() in (0, 1)  # 1: memory was released, 0: none to release


async def test_a_compressed_group_frees_its_content_budget_and_holds_the_wire_budget_until_uploaded() -> None:
    """Reading goes on while an upload waits for the gateway: only the compressed messages stay charged (ADR 0068)."""
    from concurrent.futures import ThreadPoolExecutor

    from strongroom.common.v1 import common_pb2
    from strongroom_agent.backup.stages import Chunk, Compressor, PipelineLimits, Uploader
    from strongroom_agent.jobs import RetryPolicy

    class BlockedGateway:
        def __init__(self) -> None:
            self.reply = asyncio.Event()
            self.sent: list[list[bytes]] = []

        async def upload_chunks(self, requests: list[bytes]) -> gateway_pb2.UploadChunksResponse:
            self.sent.append(requests)
            await self.reply.wait()
            return gateway_pb2.UploadChunksResponse(chunks_stored=len(requests))

    limits = PipelineLimits(uploaders=1)
    content, wire = ByteBudget(1 << 20), ByteBudget(1 << 20)
    gateway = BlockedGateway()
    trims: list[int] = []
    from strongroom_agent.memory import FreedPages

    freed = FreedPages(1, lambda: trims.append(1))
    uploader = Uploader(
        job_id="job-1",
        client=gateway,  # type: ignore[arg-type]
        retry=RetryPolicy(),
        wire=wire,
        stats=common_pb2.JobStats(),
        limits=limits,
        freed=freed,
    )
    with ThreadPoolExecutor(1) as executor:
        compressor = Compressor(
            job_id="job-1", executor=executor, workers=1, limits=limits, budget=content, wire=wire, out=uploader
        )
        raw = b"a" * 200_000  # compresses to a few hundred bytes
        await content.acquire(len(raw))
        uploading = asyncio.create_task(uploader.run())
        compressing = asyncio.create_task(compressor.run())
        await compressor.put([Chunk(b"\x01" * 32, raw, len(raw))])
        for _ in range(200):
            if gateway.sent:
                break
            await asyncio.sleep(0.01)
        assert gateway.sent, "the upload was not sent"
        wire_bytes = sum(len(r) for r in gateway.sent[0])
        assert content.used == 0  # given back while the upload waits for the gateway's reply
        assert 0 < wire.used == wire_bytes < len(raw) // 10
        gateway.reply.set()
        await compressor.close()
        await compressing
        await uploader.close()
        await asyncio.wait_for(uploading, 5)
    assert wire.used == 0 and content.used == 0
    assert trims == [1]  # counted on the raw bytes released, not the compressed ones
