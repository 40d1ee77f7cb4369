"""Repacking against the real S3 server (ADR 0042): the new pack is written locked with the gateway's
identity, the source goes through the reclaimer once its lock passed (the server refuses it before),
and the point restores byte for byte from the new pack."""

from __future__ import annotations

import asyncio
import random

import pytest
from gateway_helpers import chunk_id
from minio.error import S3Error
from strongroom_gateway.gc import collector
from test_gateway_gc import _backup, _expire, _restore
from test_gateway_gc_s3 import LOCK_SECONDS, Setup, setup  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

RNG = random.Random(11)
BIG = RNG.randbytes(60_000)
SMALL = RNG.randbytes(3_000)
OTHER = RNG.randbytes(4_000)


async def test_the_live_chunks_move_and_the_source_goes_after_its_lock(setup: Setup) -> None:
    gw = setup.gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"big": [BIG], "small": [SMALL]})
    [source] = gw.store.state.packs.values()
    gw.clock.advance(hours=1)  # within the lock slack: the source's lock is not extended
    live = await _backup(gw, agent, "job-2", {"small": [SMALL], "other": [OTHER]})
    await _expire(gw, agent, old)

    report = await collector.collect(setup.deps())
    assert (report.packs_repacked, report.packs_condemned, report.objects_deleted) == (1, 1, 0)
    new_id = gw.store.state.gc.repacked[source.pack_id]
    new = gw.store.state.packs[new_id]
    key = await gw.key_of("acct-a")
    assert gw.store.state.chunks[("acct-a", chunk_id(key, SMALL))].version_id == new.version_id
    # Both are locked on the server: the reclaimer is refused either.
    for pack in (source, new):
        with pytest.raises(S3Error) as refused:
            setup.reclaimer_client.remove_object(setup.bucket, pack.object_key, version_id=pack.version_id)
        assert refused.value.code == "AccessDenied"

    await asyncio.sleep(LOCK_SECONDS + 1)
    report = await collector.collect(setup.deps())
    assert (report.packs_reclaimed, report.objects_deleted) == (1, 1)
    keys = [k async for k in gw.objects.list("packs/")]
    assert source.object_key not in keys and new.object_key in keys
    assert not [v async for v in gw.objects.list_versions(source.object_key)]
    assert new.size < source.size // 5

    restored = await _restore(gw, agent, "r-1", live)
    assert restored == {"small": SMALL, "other": OTHER}
