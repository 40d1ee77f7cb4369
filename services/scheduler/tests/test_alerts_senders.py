"""The webhook and email senders against real local servers: an aiohttp receiver and aiosmtpd."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message as EmailMessage

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import utc
from strongroom_platform.testing import FakeClock
from strongroom_scheduler.alerts.mail import SmtpSender, SmtpSettings
from strongroom_scheduler.alerts.model import EMAIL, PENDING, WEBHOOK, Delivery, Message, Outgoing
from strongroom_scheduler.alerts.ports import DeliveryError
from strongroom_scheduler.alerts.webhook import (
    WebhookPolicy,
    WebhookSender,
    address_allowed,
    display_target,
    sign,
    verify,
)
from strongroom_scheduler.settings import AlertSettings

LOOPBACK = WebhookPolicy(allow=(ipaddress.ip_network("127.0.0.1/32"),), timeout=2)
NOW = utc(2026, 12, 6, 2, 0)


def outgoing(target: str, channel: int = WEBHOOK, secret: str = "s3cret") -> Outgoing:
    message = Message(
        message_id="m-1",
        account_id="acme",
        alert_event_id="e-1",
        kind=events_pb2.ALERT_KIND_BACKUP_FAILED,
        title="Backup failed: web-1",
        body="Instance web-1 (i-1), backup job j-1: the source root /data does not exist",
        instance_id="i-1",
        job_id="j-1",
        occurred_at=NOW,
        created_at=NOW,
    )
    delivery = Delivery(
        delivery_id="d-1",
        subscription_id="s-1",
        account_id="acme",
        message_id="m-1",
        channel=channel,
        target=target,
        state=PENDING,
        attempts=1,
        next_attempt_at=NOW,
        created_at=NOW,
    )
    return Outgoing(delivery=delivery, message=message, signing_secret=secret)


@dataclass
class Receiver:
    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    status: int = 204
    delay: float = 0.0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(url="")

    async def hook(request: web.Request) -> web.Response:
        state.requests.append((dict(request.headers), await request.read()))
        await asyncio.sleep(state.delay)
        if state.status in (301, 302, 307):
            return web.Response(status=state.status, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        return web.Response(status=state.status)

    app = web.Application()
    app.router.add_post("/hook/{token}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/hook/T0K3N"
    try:
        yield state
    finally:
        await runner.cleanup()


def receiver_verifies(secret: str, headers: dict[str, str], body: bytes, now: int) -> bool:
    """What docs/formats/alert-webhook.md tells a receiver to do, written independently of the sender."""
    parts = dict(p.split("=", 1) for p in headers["Strongroom-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(now - int(parts["t"])) <= 300


async def test_signed_document_reaches_the_receiver(receiver: Receiver) -> None:
    async with WebhookSender(LOOPBACK, FakeClock(NOW)) as sender:
        await sender.send(outgoing(receiver.url))
    [(headers, body)] = receiver.requests
    assert receiver_verifies("s3cret", headers, body, int(NOW.timestamp()))
    assert not receiver_verifies("other secret", headers, body, int(NOW.timestamp()))
    assert headers["Strongroom-Delivery"] == "d-1" and headers["Strongroom-Alert-Kind"] == "backup_failed"
    assert headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert document == {
        "format": "strongroom.alert.v1",
        "delivery_id": "d-1",
        "alert": {
            "message_id": "m-1",
            "event_id": "e-1",
            "kind": "backup_failed",
            "account_id": "acme",
            "instance_id": "i-1",
            "job_id": "j-1",
            "title": "Backup failed: web-1",
            "body": "Instance web-1 (i-1), backup job j-1: the source root /data does not exist",
            "occurred_at": "2026-12-06T02:00:00Z",
        },
    }


def test_verify_refuses_tampering_and_replays() -> None:
    body = b'{"a": 1}'
    header = sign("k", 1_000, body)
    assert verify("k", header, body, 1_000)
    assert not verify("k", header, body + b" ", 1_000)
    assert not verify("k", header, body, 1_000 + 301)  # replayed later
    assert not verify("k", header.replace("t=1000", "t=1200"), body, 1_200)  # timestamp changed
    assert not verify("k", "v1=abc", body, 1_000)


@pytest.mark.parametrize(("status", "error"), [(500, "answered HTTP 500"), (302, "redirects are not followed")])
async def test_non_2xx_is_a_failed_attempt(receiver: Receiver, status: int, error: str) -> None:
    receiver.status = status
    async with WebhookSender(LOOPBACK, FakeClock(NOW)) as sender:
        with pytest.raises(DeliveryError, match=error):
            await sender.send(outgoing(receiver.url))
    assert len(receiver.requests) == 1  # the redirect to the metadata address was not followed


async def test_slow_receiver_times_out(receiver: Receiver) -> None:
    receiver.delay = 3
    async with WebhookSender(WebhookPolicy(allow=LOOPBACK.allow, timeout=0.5), FakeClock(NOW)) as sender:
        with pytest.raises(DeliveryError, match="no answer from http://127.0.0.1:\\d+/… within 0.5s"):
            await sender.send(outgoing(receiver.url))


async def test_without_allow_list_loopback_is_refused_by_name_and_by_address(receiver: Receiver) -> None:
    """An admin who subscribes a hostname resolving to an internal address reaches nothing."""
    port = receiver.url.split(":")[2].split("/")[0]
    async with WebhookSender(WebhookPolicy(timeout=2), FakeClock(NOW)) as sender:
        with pytest.raises(DeliveryError, match="localhost resolves to 127.0.0.1, which webhooks may not reach"):
            await sender.send(outgoing(f"http://localhost:{port}/hook/x"))
        with pytest.raises(DeliveryError, match="webhooks may not reach 127.0.0.1"):
            await sender.send(outgoing(receiver.url))
    assert receiver.requests == []


def test_address_policy() -> None:
    public_only = WebhookPolicy()

    def allowed(address: str, policy: WebhookPolicy = public_only) -> bool:
        return address_allowed(ipaddress.ip_address(address), policy)

    assert allowed("93.184.216.34") and allowed("2606:4700::1111")
    for internal in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "::1", "fc00::1", "0.0.0.0"):
        assert not allowed(internal), internal
    assert not allowed("224.0.0.1") and not allowed("::ffff:10.0.0.1")
    everything = WebhookPolicy(allow=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")))
    assert allowed("10.1.2.3", everything)
    for metadata in ("169.254.169.254", "100.100.100.200", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254"):
        assert not allowed(metadata, everything), metadata


def test_display_target_hides_path_tokens() -> None:
    assert display_target("https://hooks.slack.com/services/T0/B0/XyZ") == "https://hooks.slack.com/…"
    assert display_target("https://ops.example.com:8443/?token=abc") == "https://ops.example.com:8443/…"
    assert display_target("https://ops.example.com") == "https://ops.example.com/"


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802 (aiosmtpd)
        content = envelope.content  # type: ignore[attr-defined]
        message = message_from_bytes(content if isinstance(content, bytes) else content.encode())
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))  # type: ignore[attr-defined]
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_email_reaches_a_local_smtp_server() -> None:
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        settings = SmtpSettings(
            host="127.0.0.1", port=controller.port, sender="alerts@strongroom.test", security="none"
        )
        await SmtpSender(settings, FakeClock(NOW)).send(outgoing("ops@example.com", EMAIL))
    finally:
        controller.stop()
    [(sender, recipients, mail)] = inbox.messages
    assert (sender, recipients) == ("alerts@strongroom.test", ["ops@example.com"])
    assert mail["Subject"] == "[Strongroom] Backup failed: web-1"
    assert mail["X-Strongroom-Alert-Kind"] == "backup_failed"
    text = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "the source root /data does not exist" in text and "Job: j-1" in text


async def test_email_to_a_dead_relay_is_a_failed_attempt() -> None:
    settings = SmtpSettings(host="127.0.0.1", port=free_port(), security="none", timeout=2)
    with pytest.raises(DeliveryError, match="SMTP relay 127.0.0.1:\\d+ refused or failed"):
        await SmtpSender(settings, FakeClock(NOW)).send(outgoing("ops@example.com", EMAIL))


def test_settings() -> None:
    settings = AlertSettings.from_env(
        {
            "STRONGROOM_ALERT_WEBHOOK_ALLOW": "10.0.0.0/8, 127.0.0.1",
            "STRONGROOM_ALERT_MAX_ATTEMPTS": "3",
            "STRONGROOM_SMTP_HOST": "smtp.example.com",
            "STRONGROOM_SMTP_USERNAME": "alerts",
            "STRONGROOM_SMTP_PASSWORD": "pw",
        }
    )
    assert [str(n) for n in settings.webhook.allow] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert settings.delivery.max_attempts == 3
    assert settings.smtp is not None and (settings.smtp.port, settings.smtp.security) == (587, "starttls")
    assert "pw" not in repr(settings)
    assert AlertSettings.from_env({}).smtp is None
    from strongroom_platform.settings import SettingsError

    for bad, message in [
        ({"STRONGROOM_ALERT_WEBHOOK_ALLOW": "10.0.0.0/33"}, "is not an IP network"),
        ({"STRONGROOM_SMTP_HOST": "h", "STRONGROOM_SMTP_SECURITY": "none", "STRONGROOM_SMTP_PASSWORD": "p"}, "needs"),
        ({"STRONGROOM_SMTP_HOST": "h", "STRONGROOM_SMTP_SECURITY": "ssl3"}, "must be one of"),
        ({"STRONGROOM_ALERT_RETRY_INITIAL": "100", "STRONGROOM_ALERT_RETRY_MAX": "10"}, "at least"),
    ]:
        with pytest.raises(SettingsError, match=message):
            AlertSettings.from_env(bad)
