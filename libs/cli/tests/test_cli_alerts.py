"""``strongroom messages list|read`` and ``strongroom alerts subscribe|list|remove|deliveries``."""

from __future__ import annotations

import json

from cli_fakes import Cli, FakeServices
from strongroom.alerts.v1 import alerts_pb2
from strongroom.events.v1 import events_pb2


def test_messages_list_follows_pages_and_marks_new_ones(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("--account", "acme", "messages", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["MESSAGE", "WHEN", "NEW", "KIND", "TITLE"]
    assert lines[1].split()[:5] == ["m-2", "2026-01-01", "10:00:00", "*", "backup_failed"]
    assert "Backup failed: web-2" in lines[1]
    assert lines[2].split()[3] == "backup_failed"  # read: no star
    assert "m-0: Instance web-0 (i-0), backup job j-0: the source root /data does not exist" in out
    assert out.rstrip().endswith("1 unread")
    requests = services.calls.requests["ListMessages"]
    assert [r.page_token for r in requests] == ["", "2"]  # type: ignore[attr-defined]
    assert requests[0].account_id == "acme"  # type: ignore[attr-defined]


def test_messages_list_unread_json_and_limit(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("messages", "list", "--unread", "--limit", "1", "--json")
    assert code == 0
    assert [m["message_id"] for m in json.loads(out)] == ["m-2"]
    request = services.calls.last("ListMessages")
    assert isinstance(request, alerts_pb2.ListMessagesRequest)
    assert (request.unread_only, request.page_size) == (True, 1)


def test_messages_read(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("messages", "read", "m-1", "m-2")
    assert (code, out.strip()) == (0, "2 message(s) marked read")
    request = services.calls.last("MarkMessagesRead")
    assert isinstance(request, alerts_pb2.MarkMessagesReadRequest)
    assert (list(request.message_ids), request.all) == (["m-1", "m-2"], False)
    code, out, _ = cli("messages", "read", "--all")
    assert (code, out.strip()) == (0, "3 message(s) marked read")
    code, _, err = cli("messages", "read")
    assert code == 2 and "name the messages to mark read, or give --all" in err


def test_subscribe_webhook_shows_the_secret_once(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli(
        "alerts",
        "subscribe",
        "--webhook",
        "https://hooks.example.com/x",
        "--kind",
        "backup_failed",
        "--kind",
        "restore_failed",
    )
    assert code == 0
    assert "whsec-0123" in out and "shown once" in out
    request = services.calls.last("CreateSubscription")
    assert isinstance(request, alerts_pb2.CreateSubscriptionRequest)
    assert (request.channel, request.target) == (alerts_pb2.CHANNEL_WEBHOOK, "https://hooks.example.com/x")
    assert list(request.kinds) == [events_pb2.ALERT_KIND_BACKUP_FAILED, events_pb2.ALERT_KIND_RESTORE_FAILED]
    code, out, _ = cli("alerts", "subscribe", "--email", "ops@example.com")
    assert code == 0 and "secret" not in out
    request = services.calls.last("CreateSubscription")
    assert (request.channel, request.target) == (alerts_pb2.CHANNEL_EMAIL, "ops@example.com")  # type: ignore[attr-defined]


def test_subscribe_refuses_unknown_kinds_and_needs_a_target(services: FakeServices, cli: Cli) -> None:
    try:
        cli("alerts", "subscribe", "--webhook", "https://x.example/", "--kind", "delivery_failed")
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("argparse accepted an in-app-only kind")
    try:
        cli("alerts", "subscribe")
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("argparse accepted a subscription without target")
    assert "CreateSubscription" not in services.calls.requests


def test_alerts_list_remove_and_deliveries(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("alerts", "list")
    assert code == 0
    header, row, second_page = out.splitlines()
    assert second_page.split()[:2] == ["s-2", "email"]
    assert [r.page_token for r in services.calls.requests["ListSubscriptions"]] == ["", "page-2"]  # type: ignore[attr-defined]
    assert header.split() == ["SUBSCRIPTION", "CHANNEL", "TARGET", "KINDS", "DELIVERED/PENDING/DEAD", "LAST", "ERROR"]
    assert row.split()[:5] == ["s-1", "webhook", "https://hooks.example.com/…", "all", "4/1/2"]
    assert cli("alerts", "remove", "s-1")[:2] == (0, "subscription s-1 removed\n")
    code, _, err = cli("alerts", "remove", "s-9")
    assert code == 1 and "NOT_FOUND: alert subscription s-9 not found" in err
    code, out, _ = cli("alerts", "deliveries", "--state", "dead")
    assert code == 0 and out.splitlines()[1].split()[:6] == [
        "d-1",
        "2026-01-01",
        "10:00:00",
        "dead",
        "https://hooks.example.com/…",
        "8",
    ]
    assert out.splitlines()[2].split()[0] == "d-0"  # the second page's
    request = services.calls.last("ListDeliveries")
    assert request.state == alerts_pb2.DELIVERY_STATE_DEAD  # type: ignore[attr-defined]
    assert [r.page_token for r in services.calls.requests["ListDeliveries"]] == ["", "page-2"]  # type: ignore[attr-defined]
    # --limit stops reading once that many are in, and asks no page for more
    assert len(cli("alerts", "deliveries", "--limit", "1")[1].splitlines()) == 2
    assert services.calls.last("ListDeliveries").page_size == 1  # type: ignore[attr-defined]
