"""Email deliveries through an SMTP relay (stdlib ``smtplib``, run in a worker thread)."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import smtplib
import ssl
from email.message import EmailMessage

from strongroom_platform.clock import Clock

from strongroom_scheduler.alerts.model import Outgoing, kind_name
from strongroom_scheduler.alerts.ports import DeliveryError

SECURITY_MODES = ("starttls", "tls", "none")


@dataclasses.dataclass(frozen=True, slots=True)
class SmtpSettings:
    """The relay: ``security`` ``starttls`` (default), ``tls`` (implicit, port 465) or ``none``
    (a relay on the same host or network only; a password is then refused by the settings)."""

    host: str
    port: int = 587
    sender: str = "strongroom@localhost"
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    security: str = "starttls"
    ca_file: str = ""
    timeout: float = 30.0


def compose(outgoing: Outgoing, settings: SmtpSettings, clock: Clock) -> EmailMessage:
    """The plain-text email of one delivery."""
    message = outgoing.message
    mail = EmailMessage()
    mail["From"] = settings.sender
    mail["To"] = outgoing.delivery.target
    mail["Subject"] = f"[Strongroom] {message.title}"
    mail["Date"] = email.utils.format_datetime(clock.now())
    mail["Message-ID"] = f"<{outgoing.delivery.delivery_id}@strongroom>"
    mail["X-Strongroom-Alert-Kind"] = kind_name(message.kind)
    lines = [
        message.body,
        "",
        f"Alert: {kind_name(message.kind)}",
        f"Account: {message.account_id}",
    ]
    if message.instance_id:
        lines.append(f"Instance: {message.instance_id}")
    if message.job_id:
        lines.append(f"Job: {message.job_id}")
    lines.append(f"Occurred at: {message.occurred_at.isoformat()}")
    lines += ["", "Read it in Strongroom: strongroom messages list"]
    mail.set_content("\n".join(lines) + "\n")
    return mail


class SmtpSender:
    """Sends one email per delivery; any SMTP or network failure is a ``DeliveryError``."""

    def __init__(self, settings: SmtpSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock

    async def send(self, outgoing: Outgoing) -> None:
        mail = compose(outgoing, self._settings, self._clock)
        try:
            await asyncio.to_thread(self._send_blocking, mail)
        except (smtplib.SMTPException, OSError) as exc:
            relay = f"{self._settings.host}:{self._settings.port}"
            raise DeliveryError(f"SMTP relay {relay} refused or failed: {type(exc).__name__}: {exc}") from None

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self._settings.ca_file or None)

    def _send_blocking(self, mail: EmailMessage) -> None:
        s = self._settings
        client: smtplib.SMTP
        if s.security == "tls":
            client = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self._context())
        else:
            client = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        with client:
            if s.security == "starttls":
                client.starttls(context=self._context())
            if s.username:
                client.login(s.username, s.password)
            client.send_message(mail)
