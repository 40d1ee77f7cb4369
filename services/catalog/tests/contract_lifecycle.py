"""Contract of cancel, reinstate and holds (ADR 0040) through ``lifecycle``, on every adapter.

Run against the fake and against PostgreSQL as the catalog's role, where the expiry function
(``catalog.expire_due_versions``, trusted time) decides what expires.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from catalog_fixtures import call, point
from contract_repository import Harness
from strongroom.catalog.v1 import catalog_pb2
from strongroom.events.v1 import events_pb2
from strongroom_catalog import handlers, lifecycle
from strongroom_catalog.errors import FailedPrecondition, InvalidArgument, NotFound
from strongroom_catalog.model import PointRecord
from strongroom_platform.auth import Role, operator
from strongroom_platform.events import INSTANCE_REINSTATED, new_meta
from strongroom_platform.testing import FakeClock

DAY = dt.timedelta(days=1)
INCIDENT = catalog_pb2.HOLD_KIND_INCIDENT


def deactivated(instance_id: str = "i-1", account_id: str = "acct") -> events_pb2.InstanceDeactivated:
    return events_pb2.InstanceDeactivated(
        meta=new_meta("scheduler", dt.datetime.now(dt.UTC)), account_id=account_id, instance_id=instance_id
    )


async def add(harness: Harness, *points: PointRecord) -> None:
    async with harness.repo.transaction() as tx:
        for p in points:
            await tx.upsert_point(p)


async def expire(harness: Harness) -> list[str]:
    async with harness.repo.transaction() as tx:
        return [v.version_id for v in await tx.expire_due_versions(100)]


async def listed(harness: Harness) -> list[str]:
    return [v.version_id for v in await harness.repo.list_versions("i-1", accounts=None)]


class LifecycleContract:
    async def test_cancel_hides_every_version_until_reinstated(self, harness: Harness) -> None:
        now = await harness.trusted_now()
        clock = FakeClock(now)
        await add(harness, point("p1", "v1", created_at=now - 2 * DAY), point("p2", "v2", created_at=now - DAY))
        cancel = deactivated()
        await lifecycle.handle_instance_deactivated(cancel, repo=harness.repo)
        await lifecycle.handle_instance_deactivated(cancel, repo=harness.repo)  # redelivered: once
        assert await listed(harness) == []
        with pytest.raises(NotFound, match="backup of its instance was canceled"):
            await handlers.get_point(harness.repo, "p1", call=call("GetPoint"))
        with pytest.raises(NotFound, match="canceled"):
            await handlers.browse_point(harness.repo, "p2", "", call=call("BrowsePoint"))
        # Their locks (31 days) have not passed: nothing is deleted yet.
        assert await expire(harness) == []
        # Another account's admin cannot reinstate it (refused like an unknown instance).
        stranger = operator("token:other", {"other": Role.ADMIN})
        with pytest.raises(NotFound):
            await lifecycle.reinstate_backup(harness.repo, clock, "i-1", call=call("ReinstateBackup", stranger))
        assert await lifecycle.reinstate_backup(harness.repo, clock, "i-1", call=call("ReinstateBackup")) == [
            "v2",
            "v1",
        ]
        assert await listed(harness) == ["v2", "v1"]
        assert (await handlers.get_point(harness.repo, "p1", call=call("GetPoint"))).point_id == "p1"
        reinstated = [
            events_pb2.InstanceReinstated.FromString(p)
            for t, _, p in await harness.outbox()
            if t == INSTANCE_REINSTATED
        ]
        assert [(e.instance_id, list(e.version_ids)) for e in reinstated] == [("i-1", ["v2", "v1"])]
        with pytest.raises(FailedPrecondition, match="not canceled"):
            await lifecycle.reinstate_backup(harness.repo, clock, "i-1", call=call("ReinstateBackup"))

    async def test_canceled_versions_expire_when_their_locks_pass_then_cannot_come_back(self, harness: Harness) -> None:
        now = await harness.trusted_now()
        # Two days old (far from 30) and the newest under keep-at-least-one: only the cancel expires them.
        unlocked = dataclasses.replace(point("p1", "v1", created_at=now - 2 * DAY), retain_until=now - DAY)
        locked = point("p2", "v2", instance_id="i-2", created_at=now - 2 * DAY)
        await add(harness, unlocked, locked)
        assert await expire(harness) == []
        await lifecycle.handle_instance_deactivated(deactivated(), repo=harness.repo)
        await lifecycle.handle_instance_deactivated(deactivated("i-2"), repo=harness.repo)
        assert await expire(harness) == ["v1"]
        assert await expire(harness) == []
        with pytest.raises(FailedPrecondition, match="deleted when their Object Lock passed"):
            await lifecycle.reinstate_backup(harness.repo, FakeClock(now), "i-1", call=call("ReinstateBackup"))
        # i-2's lock holds: still reinstatable.
        assert await lifecycle.reinstate_backup(harness.repo, FakeClock(now), "i-2", call=call("ReinstateBackup")) == [
            "v2"
        ]

    async def test_a_hold_keeps_versions_past_30_days_and_past_a_cancel_until_released(self, harness: Harness) -> None:
        now = await harness.trusted_now()
        clock = FakeClock(now)
        old = dataclasses.replace(point("p1", "v1", created_at=now - 40 * DAY), retain_until=now - 9 * DAY)
        await add(harness, old, dataclasses.replace(point("p2", "v2", created_at=now - DAY), retain_until=now - DAY))
        hold = await lifecycle.place_hold(
            harness.repo, clock, "i-1", INCIDENT, "INC-4711 ransomware", call=call("PlaceHold")
        )
        assert (hold.placed_by, hold.active) == ("token:admin-of-acct", True)
        assert await expire(harness) == []  # v1 is 40 days old, yet held
        await lifecycle.handle_instance_deactivated(deactivated(), repo=harness.repo)
        assert await expire(harness) == []  # canceled and unlocked, yet held
        held, _ = await lifecycle.list_holds(harness.repo, "i-1", False, call=call("ListHolds"))
        assert [h.hold_id for h in held] == [hold.hold_id]
        released = await lifecycle.release_hold(harness.repo, clock, hold.hold_id, call=call("ReleaseHold"))
        assert not released.active and released.released_by == "token:admin-of-acct"
        again = await lifecycle.release_hold(harness.repo, clock, hold.hold_id, call=call("ReleaseHold"))
        assert again.released_at == released.released_at  # idempotent
        assert await lifecycle.list_holds(harness.repo, "i-1", False, call=call("ListHolds")) == ([], "")
        assert len((await lifecycle.list_holds(harness.repo, "i-1", True, call=call("ListHolds")))[0]) == 1
        assert sorted(await expire(harness)) == ["v1", "v2"]

    async def test_holds_are_listed_in_pages_oldest_first(self, harness: Harness) -> None:
        now = await harness.trusted_now()
        clock = FakeClock(now)
        await add(harness, point("p1", "v1", created_at=now - DAY))
        placed = []
        for n in range(5):
            hold = await lifecycle.place_hold(harness.repo, clock, "i-1", INCIDENT, f"INC-{n}", call=call("PlaceHold"))
            placed.append((hold.placed_at, hold.hold_id.encode(), hold.hold_id))
            if n % 2:  # pairs share a time: the id, bytewise, breaks the tie
                clock.advance(60)
        await lifecycle.release_hold(harness.repo, clock, placed[0][2], call=call("ReleaseHold"))
        pages: list[list[str]] = []
        token = ""
        while True:
            holds, token = await lifecycle.list_holds(
                harness.repo, "i-1", True, page_size=2, page_token=token, call=call("ListHolds")
            )
            pages.append([h.hold_id for h in holds])
            if not token:
                break
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [h for p in pages for h in p] == [hold_id for *_, hold_id in sorted(placed)]
        active, last = await lifecycle.list_holds(harness.repo, "i-1", False, page_size=10, call=call("ListHolds"))
        expected = [hold_id for *_, hold_id in sorted(placed) if hold_id != placed[0][2]]  # the first is released
        assert [h.hold_id for h in active] == expected and last == ""
        with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
            await lifecycle.list_holds(harness.repo, "i-1", True, page_token="garbage!", call=call("ListHolds"))

    async def test_holds_refuse_bad_input_and_other_accounts(self, harness: Harness) -> None:
        now = await harness.trusted_now()
        clock = FakeClock(now)
        await add(harness, point("p1", "v1", created_at=now - DAY))
        with pytest.raises(InvalidArgument, match="kind must be"):
            await lifecycle.place_hold(harness.repo, clock, "i-1", 0, "why", call=call("PlaceHold"))
        with pytest.raises(InvalidArgument, match="reason is required"):
            await lifecycle.place_hold(harness.repo, clock, "i-1", INCIDENT, "  ", call=call("PlaceHold"))
        with pytest.raises(InvalidArgument, match="without NUL"):
            await lifecycle.place_hold(harness.repo, clock, "i-1", INCIDENT, "a\x00b", call=call("PlaceHold"))
        with pytest.raises(NotFound, match="no backup versions"):
            await lifecycle.place_hold(harness.repo, clock, "i-404", INCIDENT, "why", call=call("PlaceHold"))
        stranger = operator("token:other", {"other": Role.ADMIN})
        with pytest.raises(NotFound):
            await lifecycle.place_hold(harness.repo, clock, "i-1", INCIDENT, "why", call=call("PlaceHold", stranger))
        hold = await lifecycle.place_hold(harness.repo, clock, "i-1", INCIDENT, "why", call=call("PlaceHold"))
        with pytest.raises(NotFound, match="not found"):
            await lifecycle.release_hold(harness.repo, clock, hold.hold_id, call=call("ReleaseHold", stranger))
