"""How the agent reaches its gateway: TLS with the gateway's CA, pinned by the enrollment (ADR 0023).

The operator's install command gives the agent the gateway's CA bundle and the SPKI pins of the
CAs it may trust (``sha256`` of each CA's SubjectPublicKeyInfo, base64). Only the pinned CAs of
the bundle become the channel's trust anchors, so gRPC's own chain and host-name checks enforce
the pin: a gateway whose certificate another CA issued is refused on the first connection, before
the enrollment token is sent. The agent keeps its own small copy of the pin rule rather than
importing the services' platform library (it must not trust or depend on server code).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization


class PinMismatch(ValueError):
    """No CA of the bundle matches a pin: the gateway is not the one the token was issued for."""


@dataclass(frozen=True)
class GatewayTrust:
    """What the agent trusts in its gateway: a CA bundle (None: the system roots) and pins."""

    ca_pem: bytes | None = None
    pins: tuple[str, ...] = field(default=())
    plaintext: bool = False


def spki_pin(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def pinned_roots(bundle_pem: bytes, pins: Collection[str]) -> bytes:
    """The PEM of the bundle's certificates whose SPKI pin is in ``pins``; PinMismatch if none."""
    try:
        certificates = x509.load_pem_x509_certificates(bundle_pem)
    except ValueError as exc:
        raise PinMismatch(f"the gateway CA bundle is not PEM: {exc}") from None
    kept = [c for c in certificates if spki_pin(c) in set(pins)]
    if not kept:
        raise PinMismatch("no CA in the gateway's bundle matches the enrollment's pins; refusing to connect")
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in kept)


def channel_credentials(
    trust: GatewayTrust, client: tuple[bytes, bytes] | None = None
) -> grpc.ChannelCredentials | None:
    """TLS credentials under ``trust``, presenting ``client`` (certificate PEM, key PEM) when given
    (the agent mTLS listener, ADR 0028); None (plaintext) only when explicitly asked for."""
    if trust.plaintext:
        return None
    roots = trust.ca_pem
    if roots is not None and trust.pins:
        roots = pinned_roots(roots, trust.pins)
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    cert_pem, key_pem = client
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key_pem, certificate_chain=cert_pem)


def mtls_target(gateway: str, mtls_address: str) -> str:
    """Where to call with the certificate: ``mtls_address``, or ``:port`` on the enrolled host."""
    if mtls_address.startswith(":"):
        return gateway.rpartition(":")[0] + mtls_address
    return mtls_address
