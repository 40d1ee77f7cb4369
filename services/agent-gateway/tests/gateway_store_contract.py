"""Behaviour every GatewayStore adapter must have; run against the fake and PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Protocol

import pytest
from strongroom.events.v1 import events_pb2
from strongroom_gateway.ports import Account, AccountDataKey, ChunkLocation, GatewayStore, Instance, Job, Pack, Point
from strongroom_platform import events
from strongroom_platform.clock import utc

T0 = utc(2026, 3, 1, 12)


class StoreHarness(Protocol):
    store: GatewayStore

    async def outbox(self) -> list[tuple[str, str]]: ...


def job(job_id: str, instance_id: str = "i-1", kind: str = "backup", account_id: str = "acct-a") -> Job:
    return Job(job_id, instance_id, account_id, kind, b"cmd", "queued", False, T0)  # type: ignore[arg-type]


def pack(pack_id: str, account_id: str = "acct-a", retain_until: dt.datetime = T0) -> Pack:
    return Pack(pack_id, account_id, f"packs/{account_id}/{pack_id[:2]}/{pack_id}", 100, T0, retain_until)


def location(cid: bytes, pack_id: str, offset: int = 5) -> ChunkLocation:
    return ChunkLocation(cid, pack_id, "", offset, 10, 20, 1)


class GatewayStoreContract:
    @pytest.fixture
    async def harness(self) -> StoreHarness:
        raise NotImplementedError

    async def _accounts(self, store: GatewayStore) -> None:
        async with store.transaction() as tx:
            await tx.ensure_account(Account("acct-a", b"a" * 32, 1))
            await tx.ensure_account(Account("acct-b", b"b" * 32, 2))

    async def test_account_key_is_set_once(self, harness: StoreHarness) -> None:
        async with harness.store.transaction() as tx:
            first = await tx.ensure_account(Account("acct-a", b"a" * 32, 7))
            second = await tx.ensure_account(Account("acct-a", b"z" * 32, 9))
            assert first == second == Account("acct-a", b"a" * 32, 7)
            assert await tx.get_account("acct-a") == first
            assert await tx.get_account("nope") is None

    async def test_instance_lifecycle(self, harness: StoreHarness) -> None:
        await self._accounts(harness.store)
        async with harness.store.transaction() as tx:
            await tx.activate_instance("i-1", "acct-a", "h" * 64, T0)
            found = await tx.find_instance_by_token("h" * 64)
            assert found is not None and found.instance_id == "i-1" and found.token_expires_at == T0
            await tx.enroll_instance("i-1", "c" * 64, "web1", T0)
            assert await tx.find_instance_by_token("h" * 64) is None
            await tx.set_instance_capacity("i-1", 123, "web2")
            instance = await tx.get_instance("i-1", for_update=True)
            assert instance is not None
            assert (instance.credential_sha256, instance.hostname, instance.capacity_bytes) == ("c" * 64, "web2", 123)
            assert instance.enrolled_at == T0 and not instance.revoked
            await tx.revoke_instance("i-1")
            revoked = await tx.get_instance("i-1")
            assert revoked is not None and revoked.revoked and revoked.credential_sha256 is None
            await tx.activate_instance("i-1", "acct-a", "n" * 64, T0)
            again = await tx.get_instance("i-1")
            assert again is not None and not again.revoked and again.token_sha256 == "n" * 64

    async def test_region_and_name_and_a_recovered_instance(self, harness: StoreHarness) -> None:
        await self._accounts(harness.store)
        async with harness.store.transaction() as tx:
            await tx.activate_instance("i-1", "acct-a", "h" * 64, T0, region="eu-1", name="web-1")
            # A new token without region or name (an older scheduler) keeps them.
            await tx.activate_instance("i-1", "acct-a", "n" * 64, T0)
            kept = await tx.get_instance("i-1")
            assert kept is not None and (kept.region, kept.name) == ("eu-1", "web-1")
            recovered = Instance("i-2", "acct-a", None, None, None, T0, False, "db-1", 0, "eu-2", "db")
            assert await tx.recover_instance(recovered)
            assert not await tx.recover_instance(dataclasses.replace(recovered, account_id="acct-b", name="x"))
            stored = await tx.get_instance("i-2")
            assert stored == recovered  # no token, no credential: it enrolls again with a new token

    async def test_jobs(self, harness: StoreHarness) -> None:
        async with harness.store.transaction() as tx:
            assert await tx.insert_job(job("j-2"))
            assert await tx.insert_job(job("j-1"))
            assert not await tx.insert_job(job("j-1"))
            assert await tx.insert_job(job("j-other", instance_id="i-2"))
            assert [j.job_id for j in await tx.unfinished_jobs("i-1")] == ["j-2", "j-1"]
            current = await tx.get_job("j-2", for_update=True)
            assert current == job("j-2")
            await tx.update_job(Job("j-2", "i-1", "acct-a", "backup", b"cmd", "finished", True, T0, None, "v-1", T0))
            updated = await tx.get_job("j-2")
            assert updated is not None
            assert (updated.state, updated.cancel_requested, updated.version_id, updated.version_created_at) == (
                "finished",
                True,
                "v-1",
                T0,
            )
            assert [j.job_id for j in await tx.unfinished_jobs("i-1")] == ["j-1"]

    async def test_jobs_of_many_instances_for_delivery(self, harness: StoreHarness) -> None:
        await self._accounts(harness.store)
        async with harness.store.transaction() as tx:
            for job_id, instance_id in (("j-2", "i-1"), ("j-1", "i-1"), ("j-3", "i-2"), ("j-4", "i-3")):
                assert await tx.insert_job(job(job_id, instance_id=instance_id))
            await tx.update_job(dataclasses.replace(job("j-4", instance_id="i-3"), state="finished"))
            await tx.update_job(dataclasses.replace(job("j-3", instance_id="i-2"), cancel_requested=True))
            found = await tx.unfinished_jobs_of(["i-1", "i-2", "i-3", "i-none"])
            assert {i: [j.job_id for j in jobs] for i, jobs in found.items()} == {"i-1": ["j-2", "j-1"], "i-2": ["j-3"]}
            assert sorted(await tx.unfinished_job_keys(["i-1", "i-2", "i-3"])) == [
                ("i-1", "j-1", False),
                ("i-1", "j-2", False),
                ("i-2", "j-3", True),
            ]
            assert sorted(await tx.get_accounts(["acct-a", "acct-b", "nope"])) == ["acct-a", "acct-b"]
            await tx.update_job(dataclasses.replace(job("j-1"), state="running"))
            await tx.mark_delivered(["j-2", "j-1", "j-4", "j-none"])
            states = {j: (await tx.get_job(j)).state for j in ("j-1", "j-2", "j-3", "j-4")}  # type: ignore[union-attr]
            assert states == {"j-1": "running", "j-2": "delivered", "j-3": "queued", "j-4": "finished"}

    async def test_chunks_are_per_account(self, harness: StoreHarness) -> None:
        await self._accounts(harness.store)
        a1, a2 = b"\x01" * 32, b"\x02" * 32
        async with harness.store.transaction() as tx:
            assert await tx.insert_pack(pack("aa11"), [location(a1, "aa11"), location(a2, "aa11", 15)]) == 2
            # A later pack holding an already recorded chunk does not move it.
            assert await tx.insert_pack(pack("bb22"), [location(a1, "bb22")]) == 0
            found = await tx.find_chunks("acct-a", [a1, a2, b"\x03" * 32])
            assert set(found) == {a1, a2}
            assert found[a1].pack_id == "aa11" and found[a1].object_key == "packs/acct-a/aa/aa11"
            assert (found[a2].offset, found[a2].length, found[a2].raw_length, found[a2].compression) == (15, 10, 20, 1)
            assert await tx.find_chunks("acct-b", [a1, a2]) == {}
            a3 = b"\x03" * 32
            await tx.insert_pack(pack("cc33"), [location(a3, "cc33")])
            assert await tx.chunk_packs("acct-a", [a1, a2, a3, b"\x04" * 32, a1]) == ({"aa11", "cc33"}, [b"\x04" * 32])
            assert await tx.chunk_packs("acct-b", [a1, a3]) == (set(), [a1, a3])
            assert await tx.chunk_packs("acct-a", []) == (set(), [])

    async def test_pack_format_version_reaches_the_chunk_locations(self, harness: StoreHarness) -> None:
        await self._accounts(harness.store)
        v2 = Pack("cc33", "acct-a", "packs/acct-a/cc/cc33", 100, T0, T0, format_version=2)
        async with harness.store.transaction() as tx:
            await tx.insert_pack(pack("aa11"), [location(b"\x01" * 32, "aa11")])
            await tx.insert_pack(v2, [location(b"\x02" * 32, "cc33")])
            found = await tx.find_chunks("acct-a", [b"\x01" * 32, b"\x02" * 32])
        assert (found[b"\x01" * 32].pack_format, found[b"\x02" * 32].pack_format) == (1, 2)

    async def test_data_key_is_stored_once_and_rewrapped_only_from_the_expected_master_key(
        self, harness: StoreHarness
    ) -> None:
        await self._accounts(harness.store)
        first = AccountDataKey("acct-a", "m1", b"w" * 60, T0)
        async with harness.store.transaction() as tx:
            assert await tx.get_data_key("acct-a") is None
            assert await tx.ensure_data_key(first) == first
            # A second replica racing to create the key gets the first one back.
            assert await tx.ensure_data_key(AccountDataKey("acct-a", "m1", b"x" * 60, T0)) == first
            assert await tx.get_data_key("acct-b") is None
            await tx.rewrap_data_key("acct-a", "m0", AccountDataKey("acct-a", "m9", b"y" * 60, T0))
            assert await tx.get_data_key("acct-a") == first  # not wrapped by m0: unchanged
            rewrapped = AccountDataKey("acct-a", "m2", b"z" * 60, T0)
            await tx.rewrap_data_key("acct-a", "m1", rewrapped)
            assert await tx.get_data_key("acct-a") == rewrapped

    async def test_pack_retention_only_moves_later(self, harness: StoreHarness) -> None:
        await self._accounts(harness.store)
        later = T0 + dt.timedelta(days=10)
        async with harness.store.transaction() as tx:
            await tx.insert_pack(pack("aa11"), [])
            await tx.insert_pack(pack("bb22", retain_until=later), [])
            await tx.insert_pack(pack("cc33", account_id="acct-b"), [])
            stale = await tx.packs_locked_before("acct-a", ["aa11", "bb22", "cc33"], T0 + dt.timedelta(days=1))
            assert [p.pack_id for p in stale] == ["aa11"]
            await tx.set_pack_retention("aa11", later)
            await tx.set_pack_retention("aa11", T0)
            assert await tx.packs_locked_before("acct-a", ["aa11"], later) == []
            assert [
                p.retain_until for p in await tx.packs_locked_before("acct-a", ["aa11"], later + dt.timedelta(1))
            ] == [later]

    async def test_points(self, harness: StoreHarness) -> None:
        point = Point("p-1", "acct-a", "i-1", "j-1", "v-1", "/data", b"fs", "manifests/acct-a/p-1", 3, 30, T0, T0)
        async with harness.store.transaction() as tx:
            await tx.insert_job(job("j-1"))
            await tx.insert_point(point)
            assert await tx.get_point("p-1") == point
            assert await tx.find_point("j-1", "/data") == point
            assert await tx.find_point("j-1", "/") is None
            assert await tx.get_point("p-2") is None

    async def test_chunk_references_per_pack_and_a_points_recorded_references(self, harness: StoreHarness) -> None:
        """ADR 0034 (session 5): references counted per pack (an id counts as often as given), and
        recorded with the point at a move epoch."""
        await self._accounts(harness.store)
        a1, a2, a3, absent = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32
        point = Point("p-1", "acct-a", "i-1", "j-1", "v-1", "/data", b"fs", "manifests/acct-a/p-1", 3, 30, T0, T0)
        async with harness.store.transaction() as tx:
            await tx.insert_pack(pack("aa11"), [location(a1, "aa11"), location(a2, "aa11", 15)])
            await tx.insert_pack(pack("cc33"), [location(a3, "cc33")])
            counts = {a1: 3, a2: 1, a3: 2, absent: 1}
            assert await tx.chunk_pack_refs("acct-a", counts) == ({"aa11": 4, "cc33": 2}, [absent])
            assert await tx.chunk_pack_refs("acct-b", {a1: 1}) == ({}, [a1])
            assert await tx.chunk_pack_refs("acct-a", {}) == ({}, [])
            await tx.insert_job(job("j-1"))
            await tx.insert_point(point)
            assert await tx.point_refs("p-1") is None
            await tx.record_point_refs("p-1", 7, {"cc33": 2, "aa11": 4})
            assert await tx.point_refs("p-1") == (7, {"aa11": 4, "cc33": 2})
            empty = dataclasses.replace(point, point_id="p-2", mount_point="/")  # only directories
            await tx.insert_point(empty)
            await tx.record_point_refs("p-2", 0, {})
            assert await tx.point_refs("p-2") == (0, {})

    async def test_claims_and_outbox(self, harness: StoreHarness) -> None:
        event = events_pb2.JobCancelRequested(job_id="j")
        async with harness.store.transaction() as tx:
            assert await tx.claim_event("agent-gateway", "e-1")
            assert not await tx.claim_event("agent-gateway", "e-1")
            assert await tx.claim_event("other", "e-1")
            await tx.enqueue(events.JOB_UPDATED, "i-1", events_pb2.JobUpdated(job_id="j"))
            with pytest.raises(ValueError):
                await tx.enqueue(events.JOB_UPDATED, "i-1", event)
        assert await harness.outbox() == [(events.JOB_UPDATED, "i-1")]

    async def test_failed_transaction_leaves_nothing(self, harness: StoreHarness) -> None:
        with pytest.raises(RuntimeError):
            async with harness.store.transaction() as tx:
                await tx.claim_event("agent-gateway", "e-1")
                await tx.insert_job(job("j-1"))
                await tx.enqueue(events.JOB_UPDATED, "i-1", events_pb2.JobUpdated(job_id="j-1"))
                raise RuntimeError("boom")
        async with harness.store.transaction() as tx:
            assert await tx.get_job("j-1") is None
            assert await tx.claim_event("agent-gateway", "e-1")
        assert await harness.outbox() == []
