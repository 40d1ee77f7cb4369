"""``strongroom audit list``: pages, filters and output."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cli_fakes import Cli, FakeServices
from strongroom.audit.v1 import audit_pb2
from strongroom_cli.audit import parse_when
from strongroom_cli.context import UsageError


def test_audit_list_follows_pages_and_prints_who_what_and_result(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("--account", "default", "audit", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["WHEN", "WHO", "WHAT", "RESOURCES", "RESULT"]
    assert len(lines) == 4
    assert "token:abc" in lines[1] and "pause backups" in lines[1] and "instance_id=i-0" in lines[1]
    assert "PERMISSION_DENIED: role viewer on account default cannot pause backups" in lines[2]
    requests = services.calls.requests["ListAuditEvents"]
    assert [r.page_token for r in requests] == ["", "2"]  # type: ignore[attr-defined]
    assert requests[0].account_id == "default"  # type: ignore[attr-defined]


def test_audit_list_sends_the_filters_and_stops_at_the_limit(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli(
        "audit",
        "list",
        "--since",
        "2026-12-01",
        "--until",
        "2026-12-02T08:00+08:00",
        "--subject",
        "token:abc",
        "--limit",
        "1",
        "--json",
    )
    assert code == 0
    assert [e["event_id"] for e in json.loads(out)] == ["e-0"]
    request = services.calls.last("ListAuditEvents")
    assert isinstance(request, audit_pb2.ListAuditEventsRequest)
    assert request.since.ToDatetime(tzinfo=dt.UTC) == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert request.until.ToDatetime(tzinfo=dt.UTC) == dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    assert (request.subject, request.page_size) == ("token:abc", 1)


def test_times_are_absolute_or_ages() -> None:
    now = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)
    assert parse_when("24h", now) == dt.datetime(2026, 12, 5, 12, tzinfo=dt.UTC)
    assert parse_when("7d", now) == dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)
    assert parse_when("30m", now) == dt.datetime(2026, 12, 6, 11, 30, tzinfo=dt.UTC)
    assert parse_when("2026-12-01T08:00", now) == dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC)
    with pytest.raises(UsageError, match="cannot read 'yesterday'"):
        parse_when("yesterday", now)
