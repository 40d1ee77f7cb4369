"""Webhook deliveries: the JSON document, its HMAC-SHA256 signature, and the SSRF guard (ADR 0037).

The document is ``docs/formats/alert-webhook.md``. The ``Strongroom-Signature`` header is
``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``: a receiver recomputes it over
the raw body with the subscription's signing secret, compares in constant time, and refuses a
``t`` too far from its own clock (replays).

A webhook URL is chosen by an account's admin but fetched from inside the platform, so it must not
reach what only the platform can reach (server-side request forgery): only http(s), no
credentials in the URL, and every address the host resolves to, at each delivery, must be public
unless the operator allows its network (``STRONGROOM_ALERT_WEBHOOK_ALLOW``). Link-local addresses
(cloud metadata at 169.254.169.254) and Alibaba Cloud's metadata address are refused even then.
Redirects are not followed and no proxy from the environment is used.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import hmac
import ipaddress
import json
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from strongroom_platform.clock import Clock

from strongroom_scheduler.alerts.model import Outgoing, kind_name
from strongroom_scheduler.alerts.ports import DeliveryError

FORMAT = "strongroom.alert.v1"
SIGNATURE_HEADER = "Strongroom-Signature"
DELIVERY_HEADER = "Strongroom-Delivery"
KIND_HEADER = "Strongroom-Alert-Kind"
USER_AGENT = "strongroom-alerts/1"
MAX_URL_LENGTH = 2048
SIGNATURE_TOLERANCE = 300  # seconds a receiver should accept between ``t`` and its clock

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Never reachable, whatever the allow-list says: instance metadata services.
_NEVER: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),  # IPv4 link-local: AWS, GCP, Azure, OpenStack metadata
    ipaddress.ip_network("fe80::/10"),  # IPv6 link-local
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud ECS metadata
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS metadata over IPv6
)


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """``allow``: non-public networks webhooks may reach (an internal chat gateway, a test's
    loopback receiver); ``timeout``: seconds per delivery attempt."""

    allow: tuple[IPNetwork, ...] = ()
    timeout: float = 10.0


def parse_allow_list(text: str) -> tuple[IPNetwork, ...]:
    """``10.0.0.0/8, 127.0.0.1`` → networks; ValueError naming the bad entry."""
    networks: list[IPNetwork] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP network (such as 10.0.0.0/8 or 127.0.0.1)") from None
    return tuple(networks)


def address_allowed(address: IPAddress, policy: WebhookPolicy) -> bool:
    """Whether a webhook may connect to ``address``."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in _NEVER if network.version == address.version):
        return False
    if any(address in network for network in policy.allow if network.version == address.version):
        return True
    return address.is_global and not address.is_multicast


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def validate_url(url: str, policy: WebhookPolicy) -> str:
    """The URL, stripped, if a webhook may use it; ValueError saying why not.

    Hostnames are checked again at every delivery (they may resolve elsewhere by then).
    """
    url = url.strip()
    if not url:
        raise ValueError("the webhook URL is required")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("the webhook URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"the webhook URL cannot be parsed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"webhook URLs must be http:// or https://, not {parts.scheme or 'schemeless'}")
    host = parts.hostname or ""
    if not host:
        raise ValueError("the webhook URL names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the webhook URL must not carry credentials (user:password@); authenticate by signature")
    if port == 0:
        raise ValueError("the webhook URL's port must be 1-65535")
    literal = _literal(host)
    if literal is not None and not address_allowed(literal, policy):
        raise ValueError(
            f"webhooks may not reach {literal}: a private, loopback, link-local or metadata address "
            "(the operator can allow a private network with STRONGROOM_ALERT_WEBHOOK_ALLOW)"
        )
    return url


def display_target(url: str) -> str:
    """The URL as listings show it: scheme, host and port only (paths often carry a token)."""
    parts = urlsplit(url)
    rest = "/…" if parts.path not in ("", "/") or parts.query else "/"
    return f"{parts.scheme}://{parts.netloc}{rest}"


def document(outgoing: Outgoing) -> bytes:
    """The JSON body of a delivery (``docs/formats/alert-webhook.md``)."""
    message = outgoing.message
    body: dict[str, Any] = {
        "format": FORMAT,
        "delivery_id": outgoing.delivery.delivery_id,
        "alert": {
            "message_id": message.message_id,
            "event_id": message.alert_event_id,
            "kind": kind_name(message.kind),
            "account_id": message.account_id,
            "instance_id": message.instance_id,
            "job_id": message.job_id,
            "title": message.title,
            "body": message.body,
            "occurred_at": message.occurred_at.isoformat().replace("+00:00", "Z"),
        },
    }
    return json.dumps(body, ensure_ascii=False, sort_keys=True).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Strongroom-Signature`` header value of ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: int, *, tolerance: int = SIGNATURE_TOLERANCE) -> bool:
    """What a receiver does: the header's ``v1`` matches ``body`` and ``t`` is within ``tolerance`` of ``now``."""
    fields: dict[str, str] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, value)
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    return hmac.compare_digest(expected, fields.get("v1", ""))


class AddressRefused(OSError):
    """The webhook's host resolves to an address webhooks may not reach (an OSError, so aiohttp
    reports it as a connection failure with this text)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver, then refuses the host if any address is not allowed, so
    the check applies to the very addresses the connection will use (no DNS-rebinding window)."""

    def __init__(self, policy: WebhookPolicy) -> None:
        self._policy = policy
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = ipaddress.ip_address(result["host"])
            if not address_allowed(address, self._policy):
                raise AddressRefused(
                    f"{host} resolves to {address}, which webhooks may not reach (private, loopback, link-local "
                    "or metadata; see STRONGROOM_ALERT_WEBHOOK_ALLOW)"
                )
        return results

    async def close(self) -> None:
        await self._inner.close()


class WebhookSender:
    """POSTs the signed document; a 2xx answer is delivered, anything else a ``DeliveryError``.

    Open with ``async with`` (one HTTP session for the process).
    """

    def __init__(self, policy: WebhookPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WebhookSender:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._policy), use_dns_cache=False, limit=32)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._policy.timeout),
            trust_env=False,  # no proxy from the environment: the guard must see the real destination
            headers={"User-Agent": USER_AGENT},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, outgoing: Outgoing) -> None:
        if self._session is None:
            raise RuntimeError("WebhookSender used outside its async with block")
        url = outgoing.delivery.target
        try:
            validate_url(url, self._policy)  # literal addresses bypass the resolver
        except ValueError as exc:
            raise DeliveryError(str(exc)) from None
        body = document(outgoing)
        timestamp = int(self._clock.now().timestamp())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(outgoing.signing_secret, timestamp, body),
            DELIVERY_HEADER: outgoing.delivery.delivery_id,
            KIND_HEADER: kind_name(outgoing.message.kind),
        }
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                status = response.status
        except TimeoutError:
            raise DeliveryError(f"no answer from {display_target(url)} within {self._policy.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"cannot deliver to {display_target(url)}: {exc}") from None
        if 300 <= status < 400:
            raise DeliveryError(f"{display_target(url)} answered HTTP {status}; redirects are not followed")
        if not 200 <= status < 300:
            raise DeliveryError(f"{display_target(url)} answered HTTP {status}")
