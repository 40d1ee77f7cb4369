"""Garbage collection against the real S3 server (ADR 0041): the gateway writes with its own
identity, collection deletes with the reclaimer identity (ADR 0035), the server refuses every
delete while a lock holds, and a live point restores byte for byte after the sweep. Repacking
(ADR 0042): the new pack is written locked, its source goes through the reclaimer once its lock
passed, and the repacked point restores byte for byte from the new pack."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import secrets
import uuid
from collections.abc import AsyncIterator

import pytest
from gateway_helpers import GatewayHarness, chunk_id
from minio import Minio
from minio.error import S3Error
from strongroom_gateway.gc import collector
from strongroom_gateway.ports import GatewayStore, Pack
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform.clock import SystemClock
from strongroom_platform.objectstore_s3 import S3ObjectStore
from strongroom_platform.s3_policy import S3Identity, bucket_policy
from strongroom_platform.testing import FakeClock
from strongroom_testing.fixtures import S3Config
from test_gateway_gc import _backup, _chunk_pack, _expire, _restore, _segment_packs

pytestmark = pytest.mark.integration

# The gateway's clock runs 31 days minus this behind the server: its packs' 31-day locks end this
# many seconds after the test starts, and the server enforces them in real time.
LOCK_SECONDS = 12


def _client(config: S3Config, access: str, secret: str) -> Minio:
    return Minio(config.endpoint, access_key=access, secret_key=secret, secure=config.secure, region="us-east-1")


class Setup:
    def __init__(self, gw: GatewayHarness, reclaimer: S3ObjectStore, reclaimer_client: Minio, bucket: str) -> None:
        self.gw = gw
        self.reclaimer = reclaimer
        self.reclaimer_client = reclaimer_client
        self.bucket = bucket

    def deps(self) -> collector.Deps:
        gw = self.gw
        policy = collector.Policy(safety=dt.timedelta(0))
        return collector.Deps(gw.store, gw.objects, self.reclaimer, gw.keys, gw.clock, policy)


def _refused_while_locked(setup: Setup, *packs: Pack) -> None:
    for pack in packs:
        with pytest.raises(S3Error) as refused:
            setup.reclaimer_client.remove_object(setup.bucket, pack.object_key, version_id=pack.version_id)
        assert refused.value.code == "AccessDenied"


@contextlib.asynccontextmanager
async def gateway_with_identities(s3_config: S3Config, store: GatewayStore) -> AsyncIterator[Setup]:
    """A gateway on ``store`` writing to a new locked bucket as the gateway identity, with the
    reclaimer identity beside it (ADR 0035); its clock runs 31 days minus ``LOCK_SECONDS`` behind."""
    if s3_config.create_user is None:
        pytest.skip("identities need account creation, which only the local versitygw offers through its admin API")
    users = []
    for _ in range(2):
        access, secret = f"gc-{uuid.uuid4().hex[:12]}", secrets.token_urlsafe(24)
        s3_config.create_user(access, secret)
        users.append((access, secret))
    (gateway_key, gateway_secret), (reclaimer_key, reclaimer_secret) = users
    bucket = f"gc-{uuid.uuid4().hex[:16]}"
    root = _client(s3_config, s3_config.access_key, s3_config.secret_key)
    root.make_bucket(bucket, object_lock=True)
    principals = {S3Identity.GATEWAY: gateway_key, S3Identity.RECLAIMER: reclaimer_key}
    root.set_bucket_policy(bucket, json.dumps(bucket_policy(bucket, principals)))

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = FakeClock(now - dt.timedelta(days=31) + dt.timedelta(seconds=LOCK_SECONDS))
    gw = GatewayHarness(clock, store=store)
    gw.objects = S3ObjectStore(_client(s3_config, gateway_key, gateway_secret), bucket, clock=SystemClock())
    reclaimer_client = _client(s3_config, reclaimer_key, reclaimer_secret)
    await gw.start()
    try:
        yield Setup(gw, S3ObjectStore(reclaimer_client, bucket, clock=SystemClock()), reclaimer_client, bucket)
    finally:
        await gw.stop()


@pytest.fixture
async def setup(s3_config: S3Config) -> AsyncIterator[Setup]:
    # Trusted time is the real time here, as PostgreSQL's would be.
    async with gateway_with_identities(s3_config, InMemoryGatewayStore(trusted_clock=SystemClock())) as ready:
        yield ready


async def test_the_reclaimer_frees_unlocked_garbage_and_the_live_point_restores(setup: Setup) -> None:
    gw = setup.gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"a": [b"expired content " * 400]})
    gw.clock.advance(days=1)  # this point's packs are locked a day longer
    live = await _backup(gw, agent, "job-2", {"b": [b"live content " * 500], "c": [b"more " * 300]})
    old_pack, live_pack = (
        await _chunk_pack(gw, b"expired content " * 400),
        await _chunk_pack(gw, b"live content " * 500),
    )
    [old_segments], [live_segments] = await _segment_packs(gw, old), await _segment_packs(gw, live)
    await _expire(gw, agent, old)

    report = await collector.collect(setup.deps())
    # The expired point's chunks' pack and segments' pack.
    assert (report.packs_condemned, report.packs_reclaimed, report.objects_deleted) == (2, 0, 0)
    # Nothing locked is deleted, even when asked directly: the server refuses the reclaimer.
    with pytest.raises(S3Error) as refused:
        setup.reclaimer_client.remove_object(setup.bucket, old_pack.object_key, version_id=old_pack.version_id)
    assert refused.value.code == "AccessDenied"

    await asyncio.sleep(LOCK_SECONDS + 1)
    report = await collector.collect(setup.deps())
    assert (report.packs_reclaimed, report.objects_deleted, report.points_reclaimed) == (2, 2, 1)
    keys = [k async for k in gw.objects.list("")]
    assert old_pack.object_key not in keys and live_pack.object_key in keys
    assert old_segments.object_key not in keys and live_segments.object_key in keys
    assert f"manifests/acct-a/{old}" not in keys and f"manifests/acct-a/{live}" in keys
    assert f"vault/points/acct-a/{live}" in keys and f"vault/points/acct-a/{old}" not in keys
    assert not [v async for v in gw.objects.list_versions(old_pack.object_key)]

    restored = await _restore(gw, agent, "r-1", live)
    assert restored == {"b": b"live content " * 500, "c": b"more " * 300}


RNG = random.Random(11)
BIG = RNG.randbytes(60_000)
SMALL = RNG.randbytes(3_000)
OTHER = RNG.randbytes(4_000)


async def test_the_live_chunks_move_and_the_source_goes_after_its_lock(setup: Setup) -> None:
    gw = setup.gw
    agent = await gw.enrolled_agent("i-1")
    old = await _backup(gw, agent, "job-1", {"big": [BIG], "small": [SMALL]})
    source = await _chunk_pack(gw, BIG)  # (the point's segments are in a pack of their own)
    gw.clock.advance(hours=1)  # within the lock slack: the source's lock is not extended
    live = await _backup(gw, agent, "job-2", {"small": [SMALL], "other": [OTHER]})
    await _expire(gw, agent, old)

    report = await collector.collect(setup.deps())
    # The source repacked; it and the expired point's segment pack condemned.
    assert (report.packs_repacked, report.packs_condemned, report.objects_deleted) == (1, 2, 0)
    new_id = gw.store.state.gc.repacked[source.pack_id]
    new = gw.store.state.packs[new_id]
    key = await gw.key_of("acct-a")
    assert gw.store.state.chunks[("acct-a", chunk_id(key, SMALL))].version_id == new.version_id
    # Both are locked on the server: the reclaimer is refused either.
    _refused_while_locked(setup, source, new)

    await asyncio.sleep(LOCK_SECONDS + 1)
    report = await collector.collect(setup.deps())
    assert (report.packs_reclaimed, report.objects_deleted) == (2, 2)
    keys = [k async for k in gw.objects.list("packs/")]
    assert source.object_key not in keys and new.object_key in keys
    assert not [v async for v in gw.objects.list_versions(source.object_key)]
    assert new.size < source.size // 5

    restored = await _restore(gw, agent, "r-1", live)
    assert restored == {"small": SMALL, "other": OTHER}


async def test_the_hot_chunks_move_and_the_source_goes_after_its_lock_with_its_older_points(setup: Setup) -> None:
    """Generational moves (ADR 0042, update of 2026-12-06) against the server's Object Lock."""
    gw = setup.gw
    agent = await gw.enrolled_agent("i-1")
    big2 = random.Random(12).randbytes(len(BIG))
    day1 = await _backup(gw, agent, "job-1", {"big": [BIG], "small": [SMALL]})
    source = await _chunk_pack(gw, BIG)  # (the point's segments are in a pack of their own)
    gw.clock.advance(hours=1)  # within the lock slack: the source's lock is not extended
    day2 = await _backup(gw, agent, "job-2", {"big": [big2], "small": [SMALL]})
    report = await collector.collect(setup.deps())
    assert (report.packs_moved, report.packs_condemned) == (1, 0)
    [new_id] = gw.store.state.gc.moved[source.pack_id]
    new = gw.store.state.packs[new_id]
    key = await gw.key_of("acct-a")
    assert gw.store.state.chunks[("acct-a", chunk_id(key, SMALL))].version_id == new.version_id
    assert gw.store.state.chunks[("acct-a", chunk_id(key, BIG))].version_id == source.version_id
    gw.clock.advance(minutes=1)
    day3 = await _backup(gw, agent, "job-3", {"small": [SMALL]})
    assert gw.store.state.gc.point_packs[day3] == {new_id} | await gw.segment_packs(day3)
    [day1_segments], [day2_segments] = await gw.segment_packs(day1), await gw.segment_packs(day2)
    await _expire(gw, agent, day1)
    await _expire(gw, agent, day2)

    report = await collector.collect(setup.deps())
    assert source.pack_id in gw.store.state.gc.condemned and report.objects_deleted == 0
    assert {day1_segments, day2_segments} <= gw.store.state.gc.condemned.keys()
    _refused_while_locked(setup, source, new)

    await asyncio.sleep(LOCK_SECONDS + 1)
    report = await collector.collect(setup.deps())
    # The source and day 1's segment pack; day 2's, written an hour later, is locked an hour longer.
    assert (report.packs_reclaimed, report.objects_deleted) == (2, 2)
    assert gw.store.state.gc.reclaimed.keys() == {source.pack_id, day1_segments}
    keys = [k async for k in gw.objects.list("packs/")]
    assert source.object_key not in keys and new.object_key in keys
    assert await _restore(gw, agent, "r-1", day3) == {"small": SMALL}
