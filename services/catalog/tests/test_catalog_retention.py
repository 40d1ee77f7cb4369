"""Retention: 30 days from creation, except the newest version under keep-latest.

The in-memory store's ``trusted_clock`` (a FakeClock) stands for the database's trusted time; the
PostgreSQL function is covered by ``tests/integration/test_pg_roles.py`` and the repository contract.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from catalog_fixtures import T0, eventually, point, row
from strongroom.events.v1 import events_pb2
from strongroom_catalog.model import ExpiredVersion
from strongroom_catalog.retention import BATCH, expire_versions, run_retention
from strongroom_catalog.testing import InMemoryCatalogStore, InMemoryCatalogTx
from strongroom_platform.events import VERSION_EXPIRED
from strongroom_platform.testing import FakeClock

DAY = dt.timedelta(days=1)


async def seed(repo: InMemoryCatalogStore, *versions: tuple[str, str, dt.datetime]) -> None:
    async with repo.transaction() as tx:
        for version_id, instance_id, created_at in versions:
            for mount in ("/", "/data"):
                point_id = f"{version_id}{mount.replace('/', '-')}"
                await tx.upsert_point(point(point_id, version_id, instance_id, created_at, mount_point=mount))
                await tx.add_entries([row(point_id, "file")])
                await tx.set_index_state(point_id, browsable=True, error=None)


async def live(repo: InMemoryCatalogStore, instance_id: str = "i-1") -> list[str]:
    return [v.version_id for v in await repo.list_versions(instance_id, accounts=None)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def repo(clock: FakeClock) -> InMemoryCatalogStore:
    return InMemoryCatalogStore(trusted_clock=clock)


async def test_day_29_kept_day_31_expired(repo: InMemoryCatalogStore, clock: FakeClock) -> None:
    await seed(repo, ("old", "i-1", T0), ("new", "i-1", T0 + 5 * DAY))
    clock.set(T0 + 29 * DAY)
    assert await expire_versions(repo) == []
    assert await live(repo) == ["new", "old"]
    clock.set(T0 + 31 * DAY)
    assert await expire_versions(repo) == ["old"]
    assert await live(repo) == ["new"]


async def test_expires_at_exactly_30_days(repo: InMemoryCatalogStore, clock: FakeClock) -> None:
    await seed(repo, ("old", "i-1", T0), ("new", "i-1", T0 + DAY))
    clock.set(T0 + 30 * DAY - dt.timedelta(seconds=1))
    assert await expire_versions(repo) == []
    clock.advance(1)
    assert await expire_versions(repo) == ["old"]


async def test_newest_version_kept_under_keep_latest_by_default(repo: InMemoryCatalogStore, clock: FakeClock) -> None:
    await seed(repo, ("v1", "i-1", T0), ("v2", "i-1", T0 + DAY), ("v3", "i-1", T0 + 2 * DAY))
    clock.set(T0 + 365 * DAY)
    assert await expire_versions(repo) == ["v1", "v2"]
    assert await live(repo) == ["v3"]
    assert await expire_versions(repo) == []


async def test_without_keep_latest_every_version_expires(repo: InMemoryCatalogStore, clock: FakeClock) -> None:
    await seed(repo, ("v1", "i-1", T0), ("v2", "i-1", T0 + DAY), ("k1", "i-keep", T0))
    async with repo.transaction() as tx:
        await tx.set_keep_latest("i-1", False)
    clock.set(T0 + 60 * DAY)
    assert await expire_versions(repo) == ["v1", "v2"]
    assert await live(repo) == []
    assert await live(repo, "i-keep") == ["k1"]  # the other instance keeps its only version


async def test_expiry_drops_index_and_enqueues_event(repo: InMemoryCatalogStore, clock: FakeClock) -> None:
    await seed(repo, ("old", "i-1", T0), ("new", "i-1", T0 + DAY))
    clock.set(T0 + 31 * DAY)
    await expire_versions(repo)
    for point_id in ("old-", "old-data"):
        p = await repo.get_point(point_id)
        assert p is not None and p.expired and not p.browsable
        assert await repo.list_children(point_id, "", after="", limit=10) == []
    assert len(await repo.list_children("new-", "", after="", limit=10)) == 1
    [(topic, key, event)] = repo.outbox
    assert (topic, key) == (VERSION_EXPIRED, "i-1")
    assert isinstance(event, events_pb2.VersionExpired)
    assert (event.version_id, event.instance_id, event.account_id) == ("old", "i-1", "acct")
    assert list(event.point_ids) == ["old-", "old-data"]
    assert event.meta.producer == "catalog" and event.meta.event_id
    assert event.meta.occurred_at.ToDatetime(tzinfo=dt.UTC) == clock.now()


async def test_second_run_expires_nothing_twice(repo: InMemoryCatalogStore, clock: FakeClock) -> None:
    await seed(repo, ("old", "i-1", T0), ("new", "i-1", T0 + DAY))
    clock.set(T0 + 31 * DAY)
    await asyncio.gather(expire_versions(repo), expire_versions(repo))
    assert len(repo.outbox) == 1


async def test_many_due_versions_expire_in_batches(repo: InMemoryCatalogStore, clock: FakeClock) -> None:
    count = 2 * BATCH + 3
    await seed(repo, *((f"v{i:04d}", "i-1", T0 + dt.timedelta(seconds=i)) for i in range(count)))
    clock.set(T0 + 31 * DAY)
    assert await expire_versions(repo) == [f"v{i:04d}" for i in range(count - 1)]  # the newest is kept
    assert len(repo.outbox) == count - 1


async def test_periodic_task_runs_on_each_interval(repo: InMemoryCatalogStore, clock: FakeClock) -> None:
    await seed(repo, ("v1", "i-1", T0), ("v2", "i-1", T0 + 2 * DAY), ("v3", "i-1", T0 + 4 * DAY))
    clock.set(T0 + 31 * DAY)
    task = asyncio.create_task(run_retention(repo, clock, interval=DAY.total_seconds()))
    try:
        await eventually(lambda: len(repo.outbox) == 1)
        assert await live(repo) == ["v3", "v2"]
        clock.advance(days=2)
        await eventually(lambda: len(repo.outbox) == 2)
        assert await live(repo) == ["v3"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class FlakyTx(InMemoryCatalogTx):
    failures = [1]

    async def expire_due_versions(self, limit: int) -> list[ExpiredVersion]:
        if self.failures[0]:
            self.failures[0] -= 1
            raise ConnectionError("database restarting")
        return await super().expire_due_versions(limit)


class FlakyRepository(InMemoryCatalogStore):
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryCatalogTx]:
        async with self._transaction_state() as state:
            yield FlakyTx(state, self._trusted_clock)


async def test_periodic_task_survives_a_failed_run(clock: FakeClock) -> None:
    repo = FlakyRepository(trusted_clock=clock)
    await seed(repo, ("v1", "i-1", T0), ("v2", "i-1", T0 + DAY))
    clock.set(T0 + 40 * DAY)
    task = asyncio.create_task(run_retention(repo, clock, interval=60))
    try:
        await eventually(lambda: FlakyTx.failures[0] == 0)
        assert repo.outbox == []
        clock.advance(60)
        await eventually(lambda: len(repo.outbox) == 1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
