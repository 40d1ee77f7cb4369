"""If-Match for instances (ADR 0055): a write given the etag the caller read applies only to the
instance as read; run against the fake store and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from scheduler_helpers import active_instance, call
from strongroom.common.v1 import common_pb2
from strongroom_scheduler import handlers
from strongroom_scheduler.errors import Aborted
from strongroom_scheduler.handlers import Deps, SettingsInput
from strongroom_scheduler.models import Instance

HIGH = SettingsInput(priority=common_pb2.BACKUP_PRIORITY_HIGH)
LOW = SettingsInput(priority=common_pb2.BACKUP_PRIORITY_LOW)


async def check_a_stale_etag_changes_nothing(deps: Deps) -> None:
    instance = await active_instance(deps)
    iid = instance.instance_id
    read = instance.etag(deps.clock.now())
    assert read == instance.etag(deps.clock.now())  # stable while nothing changes

    async def current() -> Instance:
        return await handlers.get_instance(deps, iid, call=call("GetInstance"))

    with pytest.raises(Aborted, match=f"instance {iid} changed since etag 0+ was read"):
        await handlers.update_settings(deps, iid, HIGH, ["priority"], call=call("UpdateSettings"), etag="0" * 32)
    assert (await current()).priority == instance.priority  # nothing changed
    updated = await handlers.update_settings(deps, iid, HIGH, ["priority"], call=call("UpdateSettings"), etag=read)
    assert updated.priority == common_pb2.BACKUP_PRIORITY_HIGH
    fresh = updated.etag(deps.clock.now())
    assert fresh != read
    # the lost update If-Match prevents: a second writer still holding the first etag
    with pytest.raises(Aborted):
        await handlers.update_settings(deps, iid, LOW, ["priority"], call=call("UpdateSettings"), etag=read)
    assert (await current()).priority == common_pb2.BACKUP_PRIORITY_HIGH
    with pytest.raises(Aborted):
        await handlers.pause_backup(deps, iid, call=call("PauseBackup"), etag=read)
    assert not (await current()).paused
    # two writers with the same etag at once: the row lock orders them, the second sees a new etag
    results = await asyncio.gather(
        handlers.update_settings(deps, iid, LOW, ["priority"], call=call("UpdateSettings"), etag=fresh),
        handlers.pause_backup(deps, iid, call=call("PauseBackup"), etag=fresh),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Aborted) for r in results) == 1, results
    # without an etag a write applies to whatever is current, as before
    assert (await handlers.resume_backup(deps, iid, call=call("ResumeBackup"))).paused is False
