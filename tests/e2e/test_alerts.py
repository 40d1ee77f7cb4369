"""Alerts end to end (issue 10, ADR 0037): a backup job fails on the real stack, and a signed
webhook, an email and an in-app message are all received.

The webhook receiver (aiohttp) and the SMTP server (aiosmtpd) run in this test on 127.0.0.1; the
scheduler is told to allow that one address (STRONGROOM_ALERT_WEBHOOK_ALLOW), and still refuses
the metadata address whatever the allow-list says.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from strongroom.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_cli.stack import operator_channel
from strongroom_platform.admin import create_admin_token
from strongroom_platform.certs import CA_CERT_FILE
from strongroom_testing.fixtures import PgLogins, S3Config
from test_backup_restore import enrolled_instance, eventually, running_platform

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]


@dataclass
class Received:
    webhooks: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    mails: list[tuple[float, str, list[str], Message]] = field(default_factory=list)


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[tuple[str, Received]]:
    received = Received()

    async def hook(request: web.Request) -> web.Response:
        received.webhooks.append((time.time(), dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts/{token}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/alerts/t0k3n", received
    finally:
        await runner.cleanup()


class _Inbox:
    def __init__(self, received: Received) -> None:
        self.received = received

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802 (aiosmtpd)
        content = envelope.content  # type: ignore[attr-defined]
        mail = message_from_bytes(content if isinstance(content, bytes) else content.encode())
        self.received.mails.append((time.time(), envelope.mail_from, list(envelope.rcpt_tos), mail))  # type: ignore[attr-defined]
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def verify_signature(secret: str, header: str, body: bytes) -> bool:
    """docs/formats/alert-webhook.md, "Verifying": written from the document, not from the sender."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) <= 300


async def cli(env: dict[str, str], *argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "strongroom_cli", "--account", "acme", *argv,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_failed_backup_reaches_webhook_email_and_messages(
    stack_kafka: str,
    pg_logins: PgLogins,
    s3_config: S3Config,
    tmp_path: Path,
    webhook_receiver: tuple[str, Received],
) -> None:
    hook_url, received = webhook_receiver
    smtp = Controller(_Inbox(received), hostname="127.0.0.1", port=_free_port())
    smtp.start()
    settings = {
        "STRONGROOM_OBJECT_STORE": "s3",
        "STRONGROOM_S3_ENDPOINT": s3_config.endpoint,
        "STRONGROOM_S3_ACCESS_KEY": s3_config.access_key,
        "STRONGROOM_S3_SECRET_KEY": s3_config.secret_key,
        "STRONGROOM_S3_SECURE": "1" if s3_config.secure else "0",
        "STRONGROOM_S3_BUCKET": f"e2e-{uuid.uuid4().hex[:12]}",
        "STRONGROOM_ALERT_WEBHOOK_ALLOW": "127.0.0.1/32",
        "STRONGROOM_ALERT_POLL": "1",
        "STRONGROOM_SMTP_HOST": "127.0.0.1",
        "STRONGROOM_SMTP_PORT": str(smtp.port),
        "STRONGROOM_SMTP_SECURITY": "none",
        "STRONGROOM_SMTP_FROM": "alerts@strongroom.test",
    }
    try:
        async with running_platform(stack_kafka, pg_logins, tmp_path, settings) as platform:
            token = await create_admin_token(pg_logins.owner, "acme")
            ca = platform.tls_dir / CA_CERT_FILE
            channel = operator_channel(platform.stack.addresses["scheduler"], ca_file=ca, token=token)
            try:
                alerts = alerts_pb2_grpc.AlertServiceStub(channel)
                await _run(platform, alerts, hook_url, received, token, ca)
            finally:
                await channel.close()
    finally:
        smtp.stop()


async def _run(
    platform,  # type: ignore[no-untyped-def]
    alerts: alerts_pb2_grpc.AlertServiceAsyncStub,
    hook_url: str,
    received: Received,
    token: str,
    ca: Path,
) -> None:
    # The scheduler refuses what an attacker would point a webhook at, even with 127.0.0.1 allowed.
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "file:///etc/passwd"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await alerts.CreateSubscription(
                alerts_pb2.CreateSubscriptionRequest(channel=alerts_pb2.CHANNEL_WEBHOOK, target=url)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
    hook = await alerts.CreateSubscription(
        alerts_pb2.CreateSubscriptionRequest(channel=alerts_pb2.CHANNEL_WEBHOOK, target=hook_url)
    )
    assert len(hook.signing_secret) >= 40
    await alerts.CreateSubscription(
        alerts_pb2.CreateSubscriptionRequest(channel=alerts_pb2.CHANNEL_EMAIL, target="ops@example.com")
    )
    listed = await alerts.ListSubscriptions(alerts_pb2.ListSubscriptionsRequest())
    assert len(listed.subscriptions) == 2
    assert hook.signing_secret not in str(listed) and "t0k3n" not in str(listed)

    # A backup whose only root does not exist fails.
    missing = platform.logs.parent / "no-such-root"
    instance_id, agent = await enrolled_instance(platform, missing, platform.logs.parent / "agent-state")
    try:
        job = await platform.scheduler.RunBackupNow(scheduler_pb2.RunBackupNowRequest(instance_id=instance_id))

        async def failed() -> scheduler_pb2.BackupJob | None:
            current = await platform.scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job.job_id))
            return current if current.status == common_pb2.JOB_STATUS_FAILED else None

        final = await eventually("the backup job to fail", failed, within=180)
    finally:
        await agent.stop()
    assert final.HasField("finished_at")
    failed_at = final.finished_at.ToDatetime(tzinfo=dt.UTC).timestamp()

    # the webhook: signed, the documented JSON
    await eventually("the webhook", lambda: _ready(received.webhooks), within=60)
    [(hook_at, headers, body)] = received.webhooks
    assert verify_signature(hook.signing_secret, headers["Strongroom-Signature"], body)
    assert not verify_signature("not the secret", headers["Strongroom-Signature"], body)
    document = json.loads(body)
    assert document["format"] == "strongroom.alert.v1"
    assert document["delivery_id"] == headers["Strongroom-Delivery"]
    alert = document["alert"]
    assert (alert["kind"], alert["account_id"], alert["instance_id"], alert["job_id"]) == (
        "backup_failed",
        "acme",
        instance_id,
        job.job_id,
    )
    assert alert["title"] == "Backup failed: web-1"
    assert final.error and final.error in alert["body"]

    # the email
    await eventually("the email", lambda: _ready(received.mails), within=60)
    [(mail_at, sender, recipients, mail)] = received.mails
    assert (sender, recipients) == ("alerts@strongroom.test", ["ops@example.com"])
    assert mail["Subject"] == "[Strongroom] Backup failed: web-1"
    text = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert job.job_id in text and final.error in text

    # the in-app message, through the CLI; then marked read
    env = {**platform.env, "STRONGROOM_SCHEDULER_ADDR": platform.stack.addresses["scheduler"]}
    env.update(STRONGROOM_TOKEN=token, STRONGROOM_TLS_CA=str(ca))
    messages = json.loads(await cli(env, "messages", "list", "--unread", "--json"))
    [message] = [m for m in messages if m["job_id"] == job.job_id]
    assert (message["kind"], message["title"]) == ("ALERT_KIND_BACKUP_FAILED", "Backup failed: web-1")
    assert "1 message(s) marked read" in await cli(env, "messages", "read", message["message_id"])
    assert json.loads(await cli(env, "messages", "list", "--unread", "--json")) == []
    deliveries = await alerts.ListDeliveries(
        alerts_pb2.ListDeliveriesRequest(state=alerts_pb2.DELIVERY_STATE_DELIVERED)
    )
    assert len(deliveries.deliveries) == 2 and {d.attempts for d in deliveries.deliveries} == {1}
    sys.stderr.write(
        f"alert latency after the job finished: webhook {hook_at - failed_at:.2f}s, email {mail_at - failed_at:.2f}s\n"
    )


async def _ready(items: list[object]) -> bool:
    return bool(items)
