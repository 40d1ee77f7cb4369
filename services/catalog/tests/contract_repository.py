"""Contract of ``CatalogStore``: every adapter (fake and PostgreSQL) must pass it.

Subclasses provide the ``harness`` fixture: a fresh, empty repository and a
way to read the events its committed transactions put in the outbox.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Protocol

import pytest
from catalog_fixtures import DIR, FILE, T0, call, point, row
from strongroom.events.v1 import events_pb2
from strongroom_catalog import handlers
from strongroom_catalog.errors import InvalidArgument
from strongroom_catalog.ports import CatalogStore
from strongroom_platform.events import VERSION_EXPIRED, new_meta


class Harness(Protocol):
    repo: CatalogStore

    async def outbox(self) -> list[tuple[str, str, bytes]]:
        """(topic, key, serialized event) of every committed enqueue, in order."""
        ...

    async def trusted_now(self) -> dt.datetime:
        """The trusted time the store expires by."""
        ...

    async def keep_latest(self, instance_id: str) -> bool:
        """The instance's keep-at-least-one flag as the store holds it."""
        ...


class Boom(Exception):
    pass


class CatalogRepositoryContract:
    @pytest.fixture
    def harness(self) -> Harness:
        raise NotImplementedError

    async def test_upserted_point_reads_back_not_browsable(self, harness: Harness) -> None:
        repo = harness.repo
        p = point()
        async with repo.transaction() as tx:
            await tx.upsert_point(p)
        got = await repo.get_point("p1")
        assert got == p
        assert not got.browsable and got.index_error is None and not got.expired
        assert await repo.get_point("nope") is None

    async def test_upsert_keeps_index_state_and_the_point_as_first_recorded(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            await tx.upsert_point(point())
            await tx.set_index_state("p1", browsable=True, error=None)
        async with repo.transaction() as tx:
            await tx.upsert_point(dataclasses.replace(point(), file_count=99))
            locked = await tx.get_point("p1")
        assert locked is not None and locked.browsable and locked.file_count == point().file_count
        versions = await repo.list_versions("i-1", accounts=None)
        assert [v.version_id for v in versions] == ["v1"]

    async def test_index_error_is_recorded(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            await tx.upsert_point(point())
            await tx.set_index_state("p1", browsable=False, error="manifest missing")
        got = await repo.get_point("p1")
        assert got is not None and got.index_error == "manifest missing" and not got.browsable

    async def test_list_versions_newest_first_with_points_by_mount_point(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            await tx.upsert_point(point("p-old", "v-old", created_at=T0))
            await tx.upsert_point(point("p-data", "v-new", created_at=T0 + dt.timedelta(days=1), mount_point="/data"))
            await tx.upsert_point(point("p-root", "v-new", created_at=T0 + dt.timedelta(days=1), mount_point="/"))
            await tx.upsert_point(point("p-other", "v-other", instance_id="i-2"))
        versions = await repo.list_versions("i-1", accounts=None)
        assert [v.version_id for v in versions] == ["v-new", "v-old"]
        assert [p.point_id for p in versions[0].points] == ["p-root", "p-data"]
        assert versions[0].created_at == T0 + dt.timedelta(days=1)
        assert versions[0].account_id == "acct" and versions[0].expired_at is None
        assert await repo.list_versions("i-unknown", accounts=None) == []

    async def test_list_versions_of_the_given_accounts_only(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            await tx.upsert_point(point("p1", "v1"))
            await tx.upsert_point(point("p2", "v2", created_at=T0 + dt.timedelta(days=1), account_id="other"))
        assert [v.version_id for v in await repo.list_versions("i-1", accounts=["acct"])] == ["v1"]
        [other] = await repo.list_versions("i-1", accounts=["other", "third"])
        assert (other.version_id, [p.point_id for p in other.points]) == ("v2", ["p2"])
        assert [v.version_id for v in await repo.list_versions("i-1", accounts=None)] == ["v2", "v1"]
        assert await repo.list_versions("i-1", accounts=[]) == []

    async def test_versions_list_in_pages_newest_first_ties_by_id_in_byte_order(self, harness: Harness) -> None:
        repo = harness.repo
        # three versions share a creation time: the id, compared bytewise, breaks the tie
        made = [("v-old", T0), ("v-B", T0 + dt.timedelta(days=1)), ("v-a", T0 + dt.timedelta(days=1))]
        made += [("v-\u00e9", T0 + dt.timedelta(days=1)), ("v-new", T0 + dt.timedelta(days=2))]
        async with repo.transaction() as tx:
            for n, (version_id, created_at) in enumerate(made):
                await tx.upsert_point(point(f"p{n}", version_id, created_at=created_at))
                await tx.upsert_point(point(f"q{n}", version_id, created_at=created_at, mount_point="/data"))
        pages: list[list[str]] = []
        token = ""
        while True:
            page = await handlers.list_versions(repo, "i-1", page_size=2, page_token=token, call=call("ListVersions"))
            assert all(len(v.points) == 2 for v in page.versions)  # a page carries its versions' points
            pages.append([v.version_id for v in page.versions])
            if not page.next_page_token:
                break
            token = page.next_page_token
        assert pages == [["v-new", "v-\u00e9"], ["v-a", "v-B"], ["v-old"]]
        whole = await handlers.list_versions(repo, "i-1", call=call("ListVersions"))
        assert [v.version_id for v in whole.versions] == [v for p in pages for v in p] and whole.next_page_token == ""
        with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
            await handlers.list_versions(repo, "i-1", page_token="garbage!", call=call("ListVersions"))

    async def test_children_sorted_by_name_in_byte_order_and_paged(self, harness: Harness) -> None:
        repo = harness.repo
        names = ["b", "B", "a", "é", "a b", "z", "Z"]
        async with repo.transaction() as tx:
            await tx.upsert_point(point())
            await tx.add_entries([row("p1", "dir", DIR)])
            await tx.add_entries([row("p1", f"dir/{n}", FILE, size=i) for i, n in enumerate(names)])
            await tx.add_entries([row("p1", "dir/a/deeper", FILE), row("p1", "other", FILE)])
        expected = sorted(names)  # code point order == UTF-8 byte order
        children = await repo.list_children("p1", "dir", after="", limit=100)
        assert [c.name for c in children] == expected
        assert children[0].path == f"dir/{expected[0]}"
        first = await repo.list_children("p1", "dir", after="", limit=3)
        rest = await repo.list_children("p1", "dir", after=first[-1].name, limit=100)
        assert [c.name for c in first + rest] == expected
        root = await repo.list_children("p1", "", after="", limit=10)
        assert [c.path for c in root] == ["dir", "other"]
        assert await repo.list_children("p2", "", after="", limit=10) == []

    async def test_entry_rows_round_trip(self, harness: Harness) -> None:
        repo = harness.repo
        big = row("p1", "big", FILE, size=(1 << 62) + 5)
        async with repo.transaction() as tx:
            await tx.upsert_point(point())
            await tx.add_entries([big])
        assert await repo.list_children("p1", "", after="", limit=10) == [big]

    async def test_entry_type(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            await tx.upsert_point(point())
            await tx.add_entries([row("p1", "etc", DIR), row("p1", "etc/hosts", FILE)])
        assert await repo.entry_type("p1", "etc") == DIR
        assert await repo.entry_type("p1", "etc/hosts") == FILE
        assert await repo.entry_type("p1", "etc/missing") is None
        assert await repo.entry_type("p2", "etc") is None

    async def test_delete_entries_only_of_that_point(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            await tx.upsert_point(point("p1"))
            await tx.upsert_point(point("p2"))
            await tx.add_entries([row("p1", "x"), row("p2", "x")])
        async with repo.transaction() as tx:
            await tx.delete_entries("p1")
        assert await repo.list_children("p1", "", after="", limit=10) == []
        assert len(await repo.list_children("p2", "", after="", limit=10)) == 1

    async def test_duplicate_entries_are_refused(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            await tx.upsert_point(point())
        with pytest.raises(Exception):  # noqa: B017 - each adapter raises its own error type
            async with repo.transaction() as tx:
                await tx.add_entries([row("p1", "x"), row("p1", "x")])
        assert await repo.list_children("p1", "", after="", limit=10) == []

    async def test_claim_event_once(self, harness: Harness) -> None:
        repo = harness.repo
        async with repo.transaction() as tx:
            assert await tx.claim_event("c", "e1")
            assert not await tx.claim_event("c", "e1")
            assert await tx.claim_event("other", "e1")
        async with repo.transaction() as tx:
            assert not await tx.claim_event("c", "e1")

    async def test_exception_rolls_back_everything(self, harness: Harness) -> None:
        repo = harness.repo
        event = events_pb2.VersionExpired(meta=new_meta("catalog", T0), version_id="v1")
        with pytest.raises(Boom):
            async with repo.transaction() as tx:
                assert await tx.claim_event("c", "e1")
                await tx.upsert_point(point())
                await tx.add_entries([row("p1", "x")])
                await tx.enqueue(VERSION_EXPIRED, "i-1", event)
                raise Boom
        assert await repo.get_point("p1") is None
        assert await repo.list_children("p1", "", after="", limit=10) == []
        assert await harness.outbox() == []
        async with repo.transaction() as tx:
            assert await tx.claim_event("c", "e1")

    async def test_enqueue_commits_with_transaction(self, harness: Harness) -> None:
        repo = harness.repo
        event = events_pb2.VersionExpired(meta=new_meta("catalog", T0), version_id="v1", point_ids=["p1"])
        async with repo.transaction() as tx:
            await tx.enqueue(VERSION_EXPIRED, "i-1", event)
        [(topic, key, payload)] = await harness.outbox()
        assert (topic, key) == (VERSION_EXPIRED, "i-1")
        assert events_pb2.VersionExpired.FromString(payload) == event

    async def test_expire_due_versions(self, harness: Harness) -> None:
        repo = harness.repo
        now = await harness.trusted_now()
        old, recent = now - dt.timedelta(days=31), now - dt.timedelta(days=1)
        async with repo.transaction() as tx:
            await tx.upsert_point(point("p2", "v1", created_at=old, mount_point="/data"))
            await tx.upsert_point(point("p1", "v1", created_at=old))
            await tx.upsert_point(point("p3", "v2", created_at=recent))
            await tx.add_entries([row("p1", "x"), row("p2", "y"), row("p3", "z")])
            await tx.set_index_state("p1", browsable=True, error=None)
        async with repo.transaction() as tx:
            [expired] = await tx.expire_due_versions(100)
        assert (expired.version_id, expired.instance_id, expired.account_id) == ("v1", "i-1", "acct")
        assert expired.point_ids == ("p1", "p2")
        assert abs(expired.expired_at - await harness.trusted_now()) < dt.timedelta(minutes=5)
        async with repo.transaction() as tx:
            assert await tx.expire_due_versions(100) == []  # nothing twice
        assert [v.version_id for v in await repo.list_versions("i-1", accounts=None)] == ["v2"]
        gone = await repo.get_point("p1")
        assert gone is not None and gone.expired and not gone.browsable
        assert await repo.list_children("p1", "", after="", limit=10) == []
        assert await repo.list_children("p2", "", after="", limit=10) == []
        assert len(await repo.list_children("p3", "", after="", limit=10)) == 1
        live = await repo.get_point("p3")
        assert live is not None and not live.expired

    async def test_expire_due_versions_refuses_an_unbounded_batch(self, harness: Harness) -> None:
        for limit in (0, 1001):
            with pytest.raises(Exception, match="between 1 and 1000"):
                async with harness.repo.transaction() as tx:
                    await tx.expire_due_versions(limit)

    async def test_upsert_never_revives_an_expired_version(self, harness: Harness) -> None:
        repo = harness.repo
        now = await harness.trusted_now()
        async with repo.transaction() as tx:
            await tx.upsert_point(point("p1", "v1", created_at=now - dt.timedelta(days=40)))
            await tx.upsert_point(point("p9", "v9", created_at=now))
            assert [v.version_id for v in await tx.expire_due_versions(10)] == ["v1"]
            await tx.upsert_point(point("p2", "v1", mount_point="/data"))
        assert [v.version_id for v in await repo.list_versions("i-1", accounts=None)] == ["v9"]
        late = await repo.get_point("p2")
        assert late is not None and late.expired

    async def test_keep_latest_keeps_the_newest_setting(self, harness: Harness) -> None:
        repo = harness.repo
        hour = dt.timedelta(hours=1)

        async def flag() -> bool:
            return await harness.keep_latest("i-1")

        async def set_flag(keep: bool, as_of: dt.datetime | None) -> bool:
            async with repo.transaction() as tx:
                return await tx.set_keep_latest("i-1", keep, as_of=as_of)

        assert await flag() is True  # on until a setting arrives
        assert await set_flag(False, T0 + hour) is True  # before the instance's first point
        async with repo.transaction() as tx:
            await tx.upsert_point(point("p1", "v1"))
        assert await flag() is False
        assert await set_flag(True, T0) is False  # made earlier: ignored
        assert await flag() is False
        assert await set_flag(True, T0 + hour) is True  # made at the same time: applies
        assert await flag() is True
        assert await set_flag(False, None) is True  # unconditional; the last setting time stays
        assert await flag() is False
        assert await set_flag(True, T0) is False
        assert await set_flag(True, T0 + 2 * hour) is True
        assert await flag() is True

    async def test_expiry_keeps_the_newest_version_under_keep_latest(self, harness: Harness) -> None:
        repo = harness.repo
        now = await harness.trusted_now()

        def age(days: int) -> dt.datetime:
            return now - dt.timedelta(days=days)

        async with repo.transaction() as tx:
            await tx.upsert_point(point("a1", "va1", "i-a", created_at=age(40)))
            await tx.upsert_point(point("a2", "va2", "i-a", created_at=age(35)))
            await tx.upsert_point(point("a3", "va3", "i-a", created_at=age(31)))  # newest of i-a: kept
            await tx.upsert_point(point("b1", "vb1", "i-b", created_at=age(33)))  # newest, keep-latest off
            await tx.upsert_point(point("c1", "vc1", "i-c", created_at=age(29)))  # too young
            await tx.upsert_point(point("c0", "vc0", "i-c", created_at=age(60)))
            await tx.set_keep_latest("i-b", False)
        async with repo.transaction() as tx:
            assert [v.version_id for v in await tx.expire_due_versions(1)] == ["vc0"]  # oldest first
        async with repo.transaction() as tx:
            assert [v.version_id for v in await tx.expire_due_versions(100)] == ["va1", "va2", "vb1"]
        assert [v.version_id for v in await repo.list_versions("i-a", accounts=None)] == ["va3"]
