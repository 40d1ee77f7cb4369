"""instance-settings-changed: the scheduler's keep-latest setting reaches retention (in-memory fakes)."""

from __future__ import annotations

import datetime as dt

import pytest
from catalog_fixtures import T0, point, settings_changed
from strongroom.events.v1 import events_pb2
from strongroom_catalog import consumers
from strongroom_catalog.handlers import handle_instance_settings_changed
from strongroom_catalog.retention import expire_versions
from strongroom_catalog.testing import InMemoryCatalogStore
from strongroom_platform.eventbus import PoisonRecord, Record
from strongroom_platform.events import INSTANCE_SETTINGS_CHANGED
from strongroom_platform.testing import FakeClock, InMemoryObjectStore

DAY = dt.timedelta(days=1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def repo(clock: FakeClock) -> InMemoryCatalogStore:
    return InMemoryCatalogStore(trusted_clock=clock)


async def keep_latest(repo: InMemoryCatalogStore, instance_id: str = "i-1") -> bool:
    """The flag retention sees for the instance."""
    return repo.keep_latest(instance_id)


async def one_version(repo: InMemoryCatalogStore, instance_id: str = "i-1") -> None:
    async with repo.transaction() as tx:
        await tx.upsert_point(point(f"p-{instance_id}", f"v-{instance_id}", instance_id, created_at=T0))


async def test_keep_latest_is_on_until_a_setting_arrives(repo: InMemoryCatalogStore) -> None:
    await one_version(repo)
    assert await keep_latest(repo) is True


async def test_setting_is_applied(repo: InMemoryCatalogStore) -> None:
    await one_version(repo)
    assert await handle_instance_settings_changed(settings_changed(keep_latest=False), repo=repo) is True
    assert await keep_latest(repo) is False
    later = settings_changed(keep_latest=True, at=T0 + DAY)
    assert await handle_instance_settings_changed(later, repo=repo) is True
    assert await keep_latest(repo) is True


async def test_setting_before_the_first_point_is_kept_for_it(repo: InMemoryCatalogStore) -> None:
    await handle_instance_settings_changed(settings_changed(keep_latest=False), repo=repo)
    await one_version(repo)
    assert await keep_latest(repo) is False


async def test_older_setting_arriving_later_is_ignored(repo: InMemoryCatalogStore) -> None:
    await one_version(repo)
    older = settings_changed(keep_latest=True, at=T0)
    newer = settings_changed(keep_latest=False, at=T0 + dt.timedelta(minutes=1))
    assert await handle_instance_settings_changed(newer, repo=repo) is True
    assert await handle_instance_settings_changed(older, repo=repo) is False
    assert await keep_latest(repo) is False


async def test_redelivered_setting_changes_nothing(repo: InMemoryCatalogStore) -> None:
    await one_version(repo)
    off = settings_changed(keep_latest=False, at=T0)
    on = settings_changed(keep_latest=True, at=T0)  # made at the same time, applied after it
    assert await handle_instance_settings_changed(off, repo=repo) is True
    assert await handle_instance_settings_changed(on, repo=repo) is True
    assert await handle_instance_settings_changed(off, repo=repo) is False  # already processed
    assert await keep_latest(repo) is True


async def test_settings_of_other_instances_are_separate(repo: InMemoryCatalogStore) -> None:
    await one_version(repo, "i-1")
    await one_version(repo, "i-2")
    await handle_instance_settings_changed(settings_changed("i-2", keep_latest=False, at=T0 + DAY), repo=repo)
    await handle_instance_settings_changed(settings_changed("i-1", keep_latest=False, at=T0), repo=repo)
    assert (await keep_latest(repo, "i-1"), await keep_latest(repo, "i-2")) == (False, False)


@pytest.mark.parametrize("field", ["instance_id", "occurred_at"])
async def test_event_without_instance_or_time_is_poison(repo: InMemoryCatalogStore, field: str) -> None:
    event = settings_changed(keep_latest=False)
    if field == "occurred_at":
        event.meta.ClearField("occurred_at")
    else:
        event.ClearField("instance_id")
    with pytest.raises(PoisonRecord, match="lacks instance_id or occurred_at"):
        await handle_instance_settings_changed(event, repo=repo)


async def test_consumer_decodes_and_applies(repo: InMemoryCatalogStore) -> None:
    await one_version(repo)
    handler = consumers.record_handlers(repo, InMemoryObjectStore())[INSTANCE_SETTINGS_CHANGED]
    value = settings_changed(keep_latest=False).SerializeToString()
    await handler(Record(topic=INSTANCE_SETTINGS_CHANGED, partition=0, offset=0, key=b"i-1", value=value))
    assert await keep_latest(repo) is False
    with pytest.raises(PoisonRecord):
        await handler(Record(topic=INSTANCE_SETTINGS_CHANGED, partition=0, offset=1, key=b"i-1", value=b"\xff\xff"))


async def test_turning_keep_latest_off_expires_the_newest_old_version(
    repo: InMemoryCatalogStore, clock: FakeClock
) -> None:
    """A paused instance (no new backups): its only version is 31 days old."""
    await one_version(repo)
    clock.set(T0 + 31 * DAY)
    assert await expire_versions(repo) == []  # kept: the newest, under keep-latest (on by default)
    await handle_instance_settings_changed(settings_changed(keep_latest=False, at=clock.now()), repo=repo)
    clock.advance(600)
    assert await expire_versions(repo) == ["v-i-1"]
    assert await repo.list_versions("i-1", accounts=None) == []
    [(_, _, expired)] = repo.outbox
    assert isinstance(expired, events_pb2.VersionExpired) and expired.version_id == "v-i-1"


async def test_turning_keep_latest_on_again_keeps_the_newest(repo: InMemoryCatalogStore, clock: FakeClock) -> None:
    await one_version(repo)
    await handle_instance_settings_changed(settings_changed(keep_latest=False, at=T0), repo=repo)
    await handle_instance_settings_changed(settings_changed(keep_latest=True, at=T0 + DAY), repo=repo)
    clock.set(T0 + 40 * DAY)
    assert await expire_versions(repo) == []
