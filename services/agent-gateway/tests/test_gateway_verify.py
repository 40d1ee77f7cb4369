"""Verification (ADR 0033): packs read back at their pinned versions, decrypted, every chunk hashed; damage mapped
to the files of each point; the daily sample; leases; recoverability."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import secrets
from collections.abc import AsyncIterator

import pytest
from gateway_helpers import Agent, GatewayHarness, chunk_id, dir_entry, file_entry
from strongroom.gateway.v1 import verify_pb2
from strongroom_gateway.errors import InvalidArgument, NotFound, PermissionDenied
from strongroom_gateway.ports import Pack
from strongroom_gateway.verify import service
from strongroom_gateway.verify.engine import Deps, run_verification, sample_size
from strongroom_gateway.verify.model import Verification
from strongroom_gateway.verify.ports import VerifyStore
from strongroom_gateway.verify.rate import ReadRate
from strongroom_gateway.verify.testing import InMemoryVerifyStore
from strongroom_gateway.verify.worker import VerifyWorker, schedule_sample
from strongroom_platform.auth.principal import CallAuth, Permission, Role, operator
from strongroom_platform.objectstore import ObjectStoreError
from strongroom_platform.testing import FakeClock, InMemoryObjectStore

AUTH_FAILED = "authentication failed"


@pytest.fixture
async def vgw(clock: FakeClock) -> AsyncIterator[GatewayHarness]:
    # Packs close past 5000 bytes: a and b (3000 bytes each) share one, c and d get their own.
    harness = GatewayHarness(clock, store=InMemoryVerifyStore(), pack_target_bytes=5000)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


CONTENT = {name: secrets.token_bytes(3000 + n) for n, name in enumerate(("a", "b", "c", "d"))}


async def backed_up(gw: GatewayHarness, instance_id: str = "i-1", job_id: str = "job-1") -> tuple[Agent, str]:
    """A point of four files in three packs: a and b share pack 1, c is pack 2, d pack 3; "copy" shares a's chunk."""
    agent = await gw.enrolled_agent(instance_id) if instance_id not in _agents(gw) else _agents(gw)[instance_id]
    _agents(gw)[instance_id] = agent
    await gw.request_backup(agent, job_id)
    key = await gw.key_of(agent.account_id)
    await gw.upload(agent, job_id, [CONTENT["a"], CONTENT["b"]])
    await gw.upload(agent, job_id, [CONTENT["c"]])
    await gw.upload(agent, job_id, [CONTENT["d"]])
    entries = [
        dir_entry(""),
        file_entry("a.bin", key, [CONTENT["a"]]),
        file_entry("b.bin", key, [CONTENT["b"]]),
        file_entry("copy/a.bin", key, [CONTENT["a"]]),
        file_entry("cd.bin", key, [CONTENT["c"], CONTENT["d"]]),
    ]
    response = await gw.commit(agent, job_id, entries)
    return agent, response.point_id


def _agents(gw: GatewayHarness) -> dict[str, Agent]:
    agents: dict[str, Agent] = gw.__dict__.setdefault("_test_agents", {})
    return agents


def deps(gw: GatewayHarness, owner: str = "gw-1", *, rate: float = 0, cover_days: int = 28) -> Deps:
    return Deps(
        store=gw.store,
        objects=gw.objects,
        keys=gw.keys,
        clock=gw.clock,
        rate=ReadRate(gw.clock, rate),
        owner=owner,
        cover_days=cover_days,
    )


async def queue(gw: GatewayHarness, scope: str, target: str = "", account: str = "acct-a") -> str:
    verification = Verification(
        verification_id=secrets.token_hex(4),
        account_id=account,
        scope=scope,  # type: ignore[arg-type]
        target_id=target,
        instance_id=target if scope == "instance" else "",
        state="queued",
        created_at=gw.clock.now(),
    )
    async with gw.store.transaction() as tx:
        await tx.insert_verification(verification)
    return verification.verification_id


async def run_next(gw: GatewayHarness, owner: str = "gw-1") -> Verification:
    d = deps(gw, owner)
    now = gw.clock.now()
    async with gw.store.transaction() as tx:
        claimed = await tx.claim_verification(owner, now, now + d.lease)
    assert claimed is not None
    await run_verification(claimed, d)
    async with gw.store.transaction() as tx:
        done = await tx.get_verification(claimed.verification_id)
    assert done is not None
    return done


async def packs(gw: GatewayHarness) -> list[Pack]:
    return sorted(gw.store.state.packs.values(), key=lambda p: p.created_at)


async def pack_of(gw: GatewayHarness, content: bytes) -> Pack:
    key = await gw.key_of("acct-a")
    location = gw.store.state.chunks[("acct-a", chunk_id(key, content))]
    pack: Pack = gw.store.state.packs[location.pack_id]
    return pack


async def flip(gw: GatewayHarness, content: bytes) -> None:
    """Flip one byte in the middle of ``content``'s stored blob, in place (as a failing disk would)."""
    key = await gw.key_of("acct-a")
    async with gw.store.transaction() as tx:
        [location] = (await tx.find_chunks("acct-a", [chunk_id(key, content)])).values()
    data = bytearray(await gw.objects.get(location.object_key))
    data[location.offset + location.length // 2] ^= 0x01
    gw.objects.damage(location.object_key, bytes(data))


async def test_a_clean_point_verifies_clean_and_records_recoverability(vgw: GatewayHarness) -> None:
    _, point_id = await backed_up(vgw)
    await queue(vgw, "point", point_id)
    done = await run_next(vgw)
    assert done.state == "clean", done
    assert done.progress.points_total == done.progress.points_done == 1
    assert done.progress.packs_checked == 3
    # The point's three packs of chunks are read whole; its manifest's segments (format version 2, in
    # a fourth pack) are read and verified blob by blob when the manifest is read, not as a pack.
    segment_packs = await vgw.segment_packs(point_id)
    assert len(segment_packs) == 1 and len(await packs(vgw)) == 4
    assert done.progress.bytes_read == sum(p.size for p in await packs(vgw) if p.pack_id not in segment_packs)
    assert done.progress.damaged_files == done.progress.damaged_packs == 0
    async with vgw.store.transaction() as tx:
        [status] = await tx.recoverability("acct-a", None)
        assert await tx.damaged_files(done.verification_id, 10) == []
    assert status.instance_id == "i-1"
    assert status.last_verified_point_id == point_id
    assert status.last_verified_at == vgw.clock.now()
    assert status.damaged_files == status.damaged_points == 0


async def test_a_flipped_byte_lists_the_files_that_need_the_chunk_by_path(vgw: GatewayHarness) -> None:
    _, point_id = await backed_up(vgw)
    damaged_pack = await pack_of(vgw, CONTENT["a"])
    await flip(vgw, CONTENT["a"])
    await queue(vgw, "point", point_id)
    done = await run_next(vgw)

    assert done.state == "damaged"
    assert done.progress.damaged_packs == 1
    assert done.progress.damaged_files == 2  # a.bin and copy/a.bin share the chunk; b.bin, in the same pack, is intact
    key = await vgw.key_of("acct-a")
    reason = f"chunk {chunk_id(key, CONTENT['a']).hex()} of this file is damaged in storage ({AUTH_FAILED})"
    async with vgw.store.transaction() as tx:
        files = await tx.damaged_files(done.verification_id, 10)
        [pack] = await tx.damaged_packs(done.verification_id, 10)
        [status] = await tx.recoverability("acct-a", "i-1")
    assert [(f.point_id, f.path, f.reason) for f in files] == [
        (point_id, "a.bin", reason),
        (point_id, "copy/a.bin", reason),
    ]
    assert pack.pack_id == damaged_pack.pack_id
    assert "does not hash to its pack id" in pack.reason and AUTH_FAILED in pack.reason
    assert status.damaged_files == 2 and status.damaged_points == 1


async def test_a_delete_marker_or_a_later_put_changes_nothing_verified(vgw: GatewayHarness) -> None:
    _, point_id = await backed_up(vgw)
    pack = await pack_of(vgw, CONTENT["c"])
    vgw.objects.add_delete_marker(pack.object_key)
    other = await pack_of(vgw, CONTENT["d"])
    vgw.objects.put_new_version(other.object_key, b"garbage")
    await queue(vgw, "point", point_id)
    assert (await run_next(vgw)).state == "clean"


async def test_an_unreadable_manifest_damages_the_whole_point(vgw: GatewayHarness) -> None:
    _, point_id = await backed_up(vgw)
    point = vgw.store.state.points[point_id]
    stored = bytearray(await vgw.objects.get(point.manifest_key))
    stored[-1] ^= 0x01
    vgw.objects.damage(point.manifest_key, bytes(stored))
    await queue(vgw, "point", point_id)
    done = await run_next(vgw)
    assert done.state == "damaged"
    assert done.progress.damaged_files == point.file_count
    async with vgw.store.transaction() as tx:
        [entry] = await tx.damaged_files(done.verification_id, 10)
    assert entry.path == "" and entry.reason.startswith("the point's manifest cannot be read")


async def test_a_chunk_missing_from_the_index_damages_its_files(vgw: GatewayHarness) -> None:
    _, point_id = await backed_up(vgw)
    key = await vgw.key_of("acct-a")
    del vgw.store.state.chunks[("acct-a", chunk_id(key, CONTENT["d"]))]
    await queue(vgw, "point", point_id)
    done = await run_next(vgw)
    async with vgw.store.transaction() as tx:
        files = await tx.damaged_files(done.verification_id, 10)
    assert [(f.path, f.reason.endswith("(it is not stored for this account)")) for f in files] == [("cd.bin", True)]


async def test_an_instance_reads_each_shared_pack_once(vgw: GatewayHarness) -> None:
    await backed_up(vgw, job_id="job-1")
    vgw.clock.advance(3600)
    _, second = await backed_up(vgw, job_id="job-2")  # the same content: every chunk deduplicated
    await queue(vgw, "instance", "i-1")
    done = await run_next(vgw)
    assert done.state == "clean"
    assert done.progress.points_total == 2
    assert done.progress.packs_checked == 3
    async with vgw.store.transaction() as tx:
        [status] = await tx.recoverability("acct-a", None)
    assert status.last_verified_point_id == second  # the newest point


async def test_the_account_scope_covers_every_instance_and_no_other_account(vgw: GatewayHarness) -> None:
    await backed_up(vgw, "i-1", "job-1")
    await backed_up(vgw, "i-2", "job-2")
    other = await vgw.enrolled_agent("i-9", "acct-b")
    await vgw.request_backup(other, "job-9")
    await vgw.upload(other, "job-9", [b"other account"])
    await queue(vgw, "account")
    done = await run_next(vgw)
    assert done.progress.points_total == 2
    assert done.progress.packs_checked == 3
    async with vgw.store.transaction() as tx:
        assert [r.instance_id for r in await tx.recoverability("acct-a", None)] == ["i-1", "i-2"]
        assert await tx.recoverability("acct-b", None) == []


async def test_a_verification_whose_lease_expired_is_restarted_by_another_gateway(vgw: GatewayHarness) -> None:
    _, point_id = await backed_up(vgw)
    await queue(vgw, "point", point_id)
    first = deps(vgw, "gw-1")
    now = vgw.clock.now()
    async with vgw.store.transaction() as tx:
        claimed = await tx.claim_verification("gw-1", now, now + first.lease)
        assert claimed is not None
        assert await tx.claim_verification("gw-2", now, now + first.lease) is None  # held
    vgw.clock.advance(first.lease.total_seconds() + 1)
    done = await run_next(vgw, "gw-2")
    assert done.state == "clean"
    assert await run_verification(claimed, first) is None  # gw-1 lost it: it changes nothing
    async with vgw.store.transaction() as tx:
        assert await tx.get_verification(claimed.verification_id) == done


def test_the_sample_covers_every_pack_within_the_cover_days() -> None:
    assert sample_size(0, 28) == 0
    assert sample_size(1, 28) == 1
    assert sample_size(28, 28) == 1
    assert sample_size(29, 28) == 2
    assert sample_size(10_000, 28) * 28 >= 10_000


async def test_the_daily_sample_reads_the_least_recently_checked_packs_once_a_day(vgw: GatewayHarness) -> None:
    _, point_id = await backed_up(vgw)
    all_packs = [p.pack_id for p in await packs(vgw)]
    # Three packs of chunks and one of the manifest's segments (format version 2): the sample reads it too.
    assert len(all_packs) == 4 and (await vgw.segment_packs(point_id)) < set(all_packs)
    store: InMemoryVerifyStore = vgw.store
    checked: list[list[str]] = []
    for _day in range(4):
        assert await schedule_sample(vgw.store, vgw.clock) is not None
        assert await schedule_sample(vgw.store, vgw.clock) is None  # one per day
        before = dict(store.verify_state.pack_checks)
        done = await run_next_with(vgw, cover_days=4)
        assert done.scope == "sample" and done.state == "clean" and done.progress.packs_checked == 1
        checked.append([p for p, c in store.verify_state.pack_checks.items() if before.get(p) != c])
        vgw.clock.advance(86400)
    # four days, four packs, cover_days=4: each pack read once
    assert sorted(c for [c] in checked) == sorted(all_packs)


async def run_next_with(gw: GatewayHarness, *, cover_days: int) -> Verification:
    d = deps(gw, cover_days=cover_days)
    now = gw.clock.now()
    async with gw.store.transaction() as tx:
        claimed = await tx.claim_verification(d.owner, now, now + d.lease)
    assert claimed is not None
    await run_verification(claimed, d)
    async with gw.store.transaction() as tx:
        done = await tx.get_verification(claimed.verification_id)
    assert done is not None
    return done


async def test_damage_found_by_the_sample_is_mapped_to_every_point_of_the_account(vgw: GatewayHarness) -> None:
    _, point_id = await backed_up(vgw)
    await flip(vgw, CONTENT["c"])
    assert await schedule_sample(vgw.store, vgw.clock) is not None
    done = await run_next_with(vgw, cover_days=1)  # every pack today
    assert done.state == "damaged"
    assert done.progress.damaged_packs == 1 and done.progress.damaged_files == 1
    async with vgw.store.transaction() as tx:
        [status] = await tx.recoverability("acct-a", None)
        [entry] = await tx.damaged_files(done.verification_id, 10)
    assert entry.path == "cd.bin" and entry.point_id == point_id
    # the sample read only packs: it does not make the point "verified", but its damage shows
    assert status.last_verified_point_id == "" and status.damaged_points == 1


async def test_a_missing_pack_version_damages_every_chunk_in_it(vgw: GatewayHarness) -> None:
    _, point_id = await backed_up(vgw)
    pack = await pack_of(vgw, CONTENT["a"])
    # the pack row (and its chunk rows) name a version the store does not have
    gone = dataclasses.replace(pack, version_id="vanished")
    vgw.store.state.packs[pack.pack_id] = gone
    for key, location in list(vgw.store.state.chunks.items()):
        if location.pack_id == pack.pack_id:
            vgw.store.state.chunks[key] = dataclasses.replace(location, version_id="vanished")
    await queue(vgw, "point", point_id)
    done = await run_next(vgw)
    async with vgw.store.transaction() as tx:
        files = await tx.damaged_files(done.verification_id, 10)
        [damaged_pack] = await tx.damaged_packs(done.verification_id, 10)
    assert sorted(f.path for f in files) == ["a.bin", "b.bin", "copy/a.bin"]
    assert all(f.reason.endswith("(its pack is missing from storage)") for f in files)
    assert damaged_pack.reason == "its pack is missing from storage"


async def test_reads_are_held_to_the_rate(clock: FakeClock) -> None:
    rate = ReadRate(clock, 1_000_000, burst=1_000_000)
    await rate.acquire(1_000_000)  # the burst: at once
    waiter = asyncio.ensure_future(rate.acquire(500_000))
    await asyncio.sleep(0)
    assert not waiter.done()
    clock.advance(0.4)
    await asyncio.sleep(0)
    assert not waiter.done()
    clock.advance(0.1)
    await waiter


async def test_the_worker_runs_what_is_queued_and_the_days_sample(vgw: GatewayHarness) -> None:
    _, point_id = await backed_up(vgw)
    worker = VerifyWorker(deps(vgw), daily=True)
    await queue(vgw, "point", point_id)
    assert await worker.step()  # the sample was queued after the point: the point runs first
    assert await worker.step()  # then the sample
    assert not await worker.step()  # nothing left, and today's sample is done
    scopes = sorted(v.scope for v in vgw.store.verify_state.verifications.values())
    assert scopes == ["point", "sample"]
    vgw.clock.advance(dt.timedelta(days=1).total_seconds())
    assert await worker.step()  # a new day, a new sample


def operator_call(roles: dict[str, Role], permission: Permission) -> CallAuth:
    return CallAuth(operator("op", roles), "/strongroom.gateway.v1.VerifyService/X", permission, "verify backups")


async def check_verification_pages(store: VerifyStore, now: dt.datetime) -> None:
    """Pages of ListVerifications, newest first, ties by id bytewise; a forged token is refused."""
    made = []
    for n, vid in enumerate(["v-B", "v-a", "v-\u00e9", "v-old", "v-new", "v-mid"]):
        at = now + dt.timedelta(minutes={"v-old": 0, "v-new": 9, "v-mid": 5}.get(vid, 3))
        made.append(Verification(vid, "acct-a", "instance", "i-1", "i-1" if n % 2 else "i-2", "clean", at))
    async with store.transaction() as tx:
        for verification in made:
            await tx.insert_verification(verification)
    reader = operator_call({"acct-a": Role.VIEWER}, Permission.READ)
    pages: list[list[str]] = []
    token = ""
    while True:
        request = verify_pb2.ListVerificationsRequest(page_size=2, page_token=token)
        found, token = await service.list_verifications(request, store=store, call=reader)
        pages.append([v.verification_id for v in found])
        if not token:
            break
    assert pages == [["v-new", "v-mid"], ["v-\u00e9", "v-a"], ["v-B", "v-old"]]
    # limit, the old name, is the page size when page_size is 0; the instance filter still holds
    few, token = await service.list_verifications(
        verify_pb2.ListVerificationsRequest(limit=2, instance_id="i-1"), store=store, call=reader
    )
    assert [v.verification_id for v in few] == ["v-mid", "v-a"] and token
    rest, last = await service.list_verifications(
        verify_pb2.ListVerificationsRequest(instance_id="i-1", page_token=token), store=store, call=reader
    )
    assert [v.verification_id for v in rest] == ["v-old"] and last == ""
    with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
        await service.list_verifications(
            verify_pb2.ListVerificationsRequest(page_token="garbage!"), store=store, call=reader
        )


async def test_verifications_are_listed_in_pages(clock: FakeClock) -> None:
    await check_verification_pages(InMemoryVerifyStore(), clock.now())


async def test_operators_verify_only_their_accounts_points_and_instances(vgw: GatewayHarness) -> None:
    _, point_id = await backed_up(vgw)
    store = vgw.store
    wake = asyncio.Event()
    own = operator_call({"acct-a": Role.OPERATOR}, Permission.OPERATE)
    started = await service.start_verification(
        verify_pb2.StartVerificationRequest(point_id=point_id), store=store, clock=vgw.clock, call=own, wake=wake
    )
    assert (started.scope, started.account_id, started.instance_id, started.state) == (
        "point",
        "acct-a",
        "i-1",
        "queued",
    )
    assert wake.is_set()
    stranger = operator_call({"acct-b": Role.ADMIN}, Permission.OPERATE)
    for request in (
        verify_pb2.StartVerificationRequest(point_id=point_id),
        verify_pb2.StartVerificationRequest(instance_id="i-1"),
        verify_pb2.StartVerificationRequest(point_id="no-such-point"),
    ):
        with pytest.raises(NotFound):  # another account's point is answered as an unknown one
            await service.start_verification(request, store=store, clock=vgw.clock, call=stranger)
    with pytest.raises(NotFound):
        await service.get_verification(
            verify_pb2.GetVerificationRequest(verification_id=started.verification_id),
            store=store,
            call=operator_call({"acct-b": Role.ADMIN}, Permission.READ),
        )
    viewer = operator_call({"acct-a": Role.VIEWER}, Permission.OPERATE)
    with pytest.raises(PermissionDenied):
        await service.start_verification(
            verify_pb2.StartVerificationRequest(whole_account=True), store=store, clock=vgw.clock, call=viewer
        )
    for bad in (
        verify_pb2.StartVerificationRequest(),
        verify_pb2.StartVerificationRequest(point_id=point_id, instance_id="i-1"),
        verify_pb2.StartVerificationRequest(point_id="p\x00"),
        verify_pb2.StartVerificationRequest(instance_id="i" * 256),
    ):
        with pytest.raises(InvalidArgument):
            await service.start_verification(bad, store=store, clock=vgw.clock, call=own)
    # the sample has no account: no operator reads it
    sample = await schedule_sample(store, vgw.clock)
    assert sample is not None
    with pytest.raises(NotFound):
        await service.get_verification(
            verify_pb2.GetVerificationRequest(verification_id=sample.verification_id),
            store=store,
            call=operator_call({"acct-a": Role.ADMIN}, Permission.READ),
        )
    reader = operator_call({"acct-a": Role.VIEWER}, Permission.READ)
    listed, _ = await service.list_verifications(verify_pb2.ListVerificationsRequest(), store=store, call=reader)
    assert [v.verification_id for v in listed] == [started.verification_id]


class _Unreachable(InMemoryObjectStore):
    """Packs cannot be read at all (not damage: the storage is down)."""

    async def get(
        self, key: str, *, offset: int = 0, length: int | None = None, version_id: str | None = None
    ) -> bytes:
        if key.startswith("packs/"):
            raise ObjectStoreError("the object store did not answer (connection refused)")
        return await super().get(key, offset=offset, length=length, version_id=version_id)


async def test_an_unreachable_store_fails_the_verification_without_calling_anything_damaged(
    vgw: GatewayHarness,
) -> None:
    _, point_id = await backed_up(vgw)
    unreachable = _Unreachable(vgw.clock)
    unreachable._versions = vgw.objects._versions
    await queue(vgw, "point", point_id)
    d = dataclasses.replace(deps(vgw), objects=unreachable)
    now = vgw.clock.now()
    async with vgw.store.transaction() as tx:
        claimed = await tx.claim_verification(d.owner, now, now + d.lease)
    assert claimed is not None
    assert await run_verification(claimed, d) == "failed"
    async with vgw.store.transaction() as tx:
        done = await tx.get_verification(claimed.verification_id)
        assert done is not None
        assert await tx.recoverability("acct-a", None) == []
    assert done.error == "the stored data could not be read: the object store did not answer (connection refused)"
    assert done.progress.damaged_files == done.progress.damaged_packs == 0
