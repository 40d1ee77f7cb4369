"""The agent's client certificate (ADR 0028): its key, its file, and its renewal at half-life.

The agent makes an EC P-256 key on the host and sends only a CSR; the gateway's agent CA returns
a certificate valid for a few days. Key and certificate are kept together in one file,
``<state-dir>/agent-identity.pem`` (mode 0600, replaced atomically), so a crash never leaves a
certificate next to the wrong key. Each renewal makes a new key.

:class:`CertificateKeeper` renews while the agent runs: at half-life over its mTLS connection,
and with the bearer credential once the certificate has expired (the agent was offline). After a
renewal the caller rebuilds its channel (gRPC Python reads client certificates when a channel is
built).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from strongroom.agent.v1 import gateway_pb2

from strongroom_agent.config import write_private
from strongroom_agent.gateway_client import GatewayError
from strongroom_agent.session import sleep_or_stop

log = logging.getLogger(__name__)

IDENTITY_FILE = "agent-identity.pem"
# Renew by bearer this long before the end, so a handshake never races the expiry.
EXPIRY_MARGIN = dt.timedelta(minutes=5)
# Longest sleep between checks: a suspended host or a stepped clock is noticed within this.
CHECK_INTERVAL_SECONDS = 600.0
RETRY_SECONDS = 60.0


class IdentityError(Exception):
    """The identity file cannot be read or does not hold a matching certificate and key."""


@dataclass(frozen=True)
class ClientCertificate:
    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def renew_at(self) -> dt.datetime:
        """Half-life: halfway between the start and the end of the validity."""
        cert = self.certificate
        return cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) / 2

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.not_after - EXPIRY_MARGIN


def new_key_and_csr() -> tuple[bytes, bytes]:
    """A fresh EC P-256 key (PEM, stays on the host) and a CSR for it (PEM, sent to the gateway)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strongroom-agent")]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def identity_path(state_dir: str) -> str:
    return os.path.join(state_dir, IDENTITY_FILE)


def save_identity(state_dir: str, identity: ClientCertificate) -> None:
    """Write certificate and key as one 0600 file, atomically (temp file + rename)."""
    _check_pair(identity)
    write_private(state_dir, identity_path(state_dir), identity.cert_pem + identity.key_pem)


def load_identity(state_dir: str) -> ClientCertificate | None:
    """The stored certificate and key, or None when the agent has none yet (enrolled without one)."""
    try:
        with open(identity_path(state_dir), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(f"cannot read {identity_path(state_dir)}: {exc}") from None
    begin_key = data.find(b"-----BEGIN PRIVATE KEY-----")
    if begin_key < 0:
        raise IdentityError(f"{identity_path(state_dir)} holds no private key")
    identity = ClientCertificate(data[:begin_key], data[begin_key:])
    _check_pair(identity)
    return identity


def _check_pair(identity: ClientCertificate) -> None:
    try:
        cert = identity.certificate
        key = serialization.load_pem_private_key(identity.key_pem, password=None)
    except ValueError as exc:
        raise IdentityError(f"unreadable agent certificate or key: {exc}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key().public_bytes(der, spki) != (
        cert.public_key().public_bytes(der, spki)
    ):
        raise IdentityError("the agent certificate does not belong to its key")


Renew = Callable[[bytes], Awaitable[gateway_pb2.AgentCertificate]]
"""Sends a CSR and returns the gateway's answer (raises ``GatewayError``)."""
OnRenewed = Callable[[ClientCertificate, gateway_pb2.AgentCertificate], Awaitable[None]]


class CertificateKeeper:
    """Keeps the agent's certificate valid while it runs.

    ``renew_mtls`` calls ``RenewCertificate`` on the current mTLS channel, ``renew_bearer`` on the
    server-TLS listener with the bearer credential. After a renewal the identity is saved and
    ``on_renewed`` runs (the caller switches to a channel built with the new certificate).
    """

    def __init__(
        self,
        state_dir: str,
        current: ClientCertificate,
        *,
        renew_mtls: Renew,
        renew_bearer: Renew,
        on_renewed: OnRenewed,
        now: Callable[[], dt.datetime],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._state_dir = state_dir
        self.current = current
        self._renew_mtls = renew_mtls
        self._renew_bearer = renew_bearer
        self._on_renewed = on_renewed
        self._now = now
        self._sleep = sleep
        self.renewals = 0

    async def renew(self, *, bearer: bool) -> ClientCertificate:
        """A new key and certificate, saved; raises ``GatewayError`` when the gateway refuses."""
        key_pem, csr_pem = new_key_and_csr()
        answer = await (self._renew_bearer if bearer else self._renew_mtls)(csr_pem)
        renewed = ClientCertificate(bytes(answer.certificate_pem), key_pem)
        save_identity(self._state_dir, renewed)
        self.current = renewed
        self.renewals += 1
        log.info(
            "renewed the agent certificate (%s) until %s", "bearer" if bearer else "mTLS", renewed.not_after.isoformat()
        )
        await self._on_renewed(renewed, answer)
        return renewed

    async def run(self, stop: asyncio.Event) -> None:
        """Renew at half-life (mTLS) or after expiry (bearer) until ``stop``; failures are retried.

        A refusal of the credential (UNAUTHENTICATED, PERMISSION_DENIED) on the bearer path ends
        the loop with that error: the instance was revoked.
        """
        while not stop.is_set():
            now = self._now()
            current = self.current
            if current.expired(now) or now >= current.renew_at:
                bearer = current.expired(now)
                try:
                    await self.renew(bearer=bearer)
                    continue
                except GatewayError as exc:
                    if bearer and exc.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                        raise
                    log.warning("certificate renewal failed (%s); retrying in %.0f s", exc, RETRY_SECONDS)
                    wait = RETRY_SECONDS
            else:
                wait = min((current.renew_at - now).total_seconds(), CHECK_INTERVAL_SECONDS)
            await sleep_or_stop(self._sleep, max(wait, 0.0), stop)
