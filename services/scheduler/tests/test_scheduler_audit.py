"""The audit trail kept by the scheduler (ADR 0027): the consumer of ``audit-recorded`` and
``ListAuditEvents``, over the in-memory store."""

from __future__ import annotations

import datetime as dt

import pytest
from scheduler_helpers import admin
from strongroom.events.v1 import events_pb2
from strongroom_platform.auth import NotFound, PermissionDenied, Role, operator
from strongroom_platform.errors import InvalidArgument
from strongroom_platform.events import new_meta
from strongroom_platform.testing import FakeClock, call_for
from strongroom_scheduler import handlers
from strongroom_scheduler.handlers import Deps
from strongroom_scheduler.testing import InMemorySchedulerStore

LIST = "/strongroom.audit.v1.AuditService/ListAuditEvents"


def record(
    clock: FakeClock, accounts: list[str], *, subject: str = "token:t1", code: str = "OK"
) -> events_pb2.AuditRecorded:
    return events_pb2.AuditRecorded(
        meta=new_meta("scheduler", clock.now()),
        subject=subject,
        principal_kind="operator",
        account_ids=accounts,
        method="/strongroom.scheduler.v1.SchedulerService/PauseBackup",
        verb="pause backups",
        resources={"instance_id": "i-1"},
        result_code=code,
    )


async def listed(deps: Deps, account: str = "acme", **kwargs: object) -> tuple[list[events_pb2.AuditRecorded], str]:
    options: dict[str, object] = {"page_size": 0, "page_token": "", "since": None, "until": None, "subject": ""}
    options.update(kwargs)
    return await handlers.list_audit_events(
        deps,
        account,
        call=call_for(LIST, admin(account)),
        **options,  # type: ignore[arg-type]
    )


async def test_each_record_is_kept_once(deps: Deps, store: InMemorySchedulerStore, clock: FakeClock) -> None:
    event = record(clock, ["acme"])
    await handlers.handle_audit_recorded(event, deps)
    await handlers.handle_audit_recorded(event, deps)  # redelivered
    events, next_page = await listed(deps)
    assert [e.meta.event_id for e in events] == [event.meta.event_id] and next_page == ""
    assert events[0] == event


async def test_a_record_without_method_subject_or_result_is_refused(deps: Deps, clock: FakeClock) -> None:
    broken = record(clock, ["acme"])
    broken.result_code = ""
    with pytest.raises(InvalidArgument):
        await handlers.handle_audit_recorded(broken, deps)


async def test_an_account_sees_its_records_only_newest_first_page_by_page(deps: Deps, clock: FakeClock) -> None:
    ids = []
    for n in range(5):
        clock.advance(seconds=10)
        event = record(clock, ["acme"] if n != 2 else ["globex"])
        await handlers.handle_audit_recorded(event, deps)
        if n != 2:
            ids.append(event.meta.event_id)
    clock.advance(seconds=10)  # records of one instant are ordered by event id, which is random
    shared = record(clock, ["globex", "acme"])  # a call on both accounts (a token granting both)
    await handlers.handle_audit_recorded(shared, deps)
    ids.append(shared.meta.event_id)
    first, token = await listed(deps, page_size=3)
    second, last = await listed(deps, page_size=3, page_token=token)
    assert [e.meta.event_id for e in first + second] == list(reversed(ids))
    assert token and last == ""
    globex, _ = await listed(deps, "globex")
    assert len(globex) == 2


async def test_filters_by_time_and_subject(deps: Deps, clock: FakeClock) -> None:
    start = clock.now()
    await handlers.handle_audit_recorded(record(clock, ["acme"], subject="token:old"), deps)
    clock.advance(hours=1)
    middle = clock.now()
    await handlers.handle_audit_recorded(record(clock, ["acme"], subject="token:new"), deps)
    clock.advance(hours=1)
    await handlers.handle_audit_recorded(record(clock, ["acme"], subject="token:old", code="NOT_FOUND"), deps)
    since, _ = await listed(deps, since=middle)
    assert [e.subject for e in since] == ["token:old", "token:new"]
    window, _ = await listed(deps, since=start, until=middle + dt.timedelta(seconds=1))
    assert [e.subject for e in window] == ["token:new", "token:old"]
    old, _ = await listed(deps, subject="token:old")
    assert [e.result_code for e in old] == ["NOT_FOUND", "OK"]
    with pytest.raises(InvalidArgument, match="since must be before until"):
        await listed(deps, since=middle, until=start)


async def test_bad_page_tokens_are_invalid_arguments(deps: Deps) -> None:
    for token in ("not base64!", "bm90IGEgdG9rZW4="):
        with pytest.raises(InvalidArgument, match="page_token"):
            await listed(deps, page_token=token)


async def test_only_admins_of_the_account_read_its_trail(deps: Deps, clock: FakeClock) -> None:
    await handlers.handle_audit_recorded(record(clock, ["acme"]), deps)
    options = {"page_size": 0, "page_token": "", "since": None, "until": None, "subject": ""}
    operator_of_acme = operator("token:op", {"acme": Role.OPERATOR})
    with pytest.raises(PermissionDenied, match="cannot read the audit trail"):
        await handlers.list_audit_events(deps, "acme", call=call_for(LIST, operator_of_acme), **options)  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="account acme not found"):
        await handlers.list_audit_events(deps, "acme", call=call_for(LIST, admin("globex")), **options)  # type: ignore[arg-type]
