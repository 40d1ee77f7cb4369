"""Agent identity by client certificate (ADR 0028): issue, renew, authenticate, revoke.

- **Issue.** ``Enroll`` with a CSR (and ``RenewCertificate``) returns a certificate of the agent CA
  for the CSR's EC P-256 key: URI SAN ``spiffe://strongroom/agent/<account>/<instance>``, valid
  ``validity`` (7 days), its serial recorded in ``agent_certificates``.
- **Authenticate.** On the agent mTLS listener gRPC has verified the chain against the agent CA
  (and the validity period, by the wall clock) before any handler runs;
  :func:`certificate_authenticator` then maps the URI SAN to the agent principal and refuses a
  certificate that is expired by the gateway's clock, was never recorded, is on the deny-list, or
  whose instance was revoked.
- **Renew.** Over mTLS with the current certificate (the agent renews at half-life), or on the
  server-TLS listener with the bearer credential once the certificate has expired; refused when
  the instance is revoked (its bearer hash is gone) or the presented certificate is denied.
- **Revoke.** ``instance-deactivated`` (cancel) denies every certificate of the instance;
  ``AgentAdminService.RevokeAgentCertificates`` denies one or all and clears the bearer credential.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from strongroom.agent.v1 import gateway_pb2
from strongroom.gateway.v1 import agent_admin_pb2
from strongroom_platform.auth import AgentAuthenticator, AgentCall, Principal
from strongroom_platform.auth import agent as agent_principal
from strongroom_platform.certs import CertificateAuthority, CsrRefused, agent_identity, spki_sha256
from strongroom_platform.clock import Clock

from strongroom_gateway import agents
from strongroom_gateway.agent_cert_store import AgentCertificate
from strongroom_gateway.agents import Identity
from strongroom_gateway.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from strongroom_gateway.ports import GatewayStore, GatewayTx
from strongroom_gateway.sessions import SessionRegistry

log = logging.getLogger(__name__)

AGENT_CERT_VALIDITY = dt.timedelta(days=7)
RENEW_METHOD = "/strongroom.agent.v1.AgentGatewayService/RenewCertificate"
ENROLL_METHOD = "/strongroom.agent.v1.AgentGatewayService/Enroll"
_MAX_CSR_BYTES = 8192


def serial_hex(cert: x509.Certificate) -> str:
    """The deny-list's key: the serial number in lower-case hex."""
    return f"{cert.serial_number:x}"


@dataclass
class CertificateIssuer:
    """The gateway's agent CA, with what it tells agents along with each certificate.

    ``mtls_address`` is where agents call with their certificate (``host:port``, or ``:port`` for
    the host they enrolled with); it is set once the mTLS listener is bound. ``gateway_ca_pem`` is
    the bundle of CAs the gateway's server certificate may chain to (the current one and, before
    a rotation, the next): agents receive it with its SPKI pins on every renewal.
    """

    ca: CertificateAuthority
    clock: Clock
    validity: dt.timedelta = AGENT_CERT_VALIDITY
    mtls_address: str = ""
    gateway_ca_pem: bytes = b""
    _pins: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.gateway_ca_pem:
            self._pins = [spki_sha256(c) for c in x509.load_pem_x509_certificates(self.gateway_ca_pem)]

    def sign(self, csr_pem: bytes, account_id: str, instance_id: str) -> x509.Certificate:
        if not csr_pem or len(csr_pem) > _MAX_CSR_BYTES:
            raise InvalidArgument("a certificate signing request (PEM, at most 8 KiB) is required")
        try:
            return self.ca.sign_agent_csr(
                csr_pem, account_id=account_id, instance_id=instance_id, validity=self.validity, clock=self.clock
            )
        except CsrRefused as exc:
            raise InvalidArgument(f"certificate signing request refused: {exc}") from None

    def message(self, cert: x509.Certificate) -> gateway_pb2.AgentCertificate:
        return gateway_pb2.AgentCertificate(
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
            mtls_address=self.mtls_address,
            gateway_ca_pins=self._pins,
            gateway_ca_pem=self.gateway_ca_pem,
        )


async def issue(
    tx: GatewayTx, issuer: CertificateIssuer, csr_pem: bytes, *, account_id: str, instance_id: str
) -> gateway_pb2.AgentCertificate:
    """Sign ``csr_pem`` for the instance and record the serial, inside ``tx``."""
    cert = issuer.sign(csr_pem, account_id, instance_id)
    await tx.record_certificate(
        AgentCertificate(
            serial=serial_hex(cert),
            instance_id=instance_id,
            account_id=account_id,
            issued_at=issuer.clock.now(),
            not_after=cert.not_valid_after_utc,
        )
    )
    log.info(
        "issued agent certificate %s to instance %s until %s", serial_hex(cert), instance_id, cert.not_valid_after_utc
    )
    return issuer.message(cert)


async def renew(
    identity: Identity, request: gateway_pb2.RenewCertificateRequest, *, store: GatewayStore, issuer: CertificateIssuer
) -> gateway_pb2.RenewCertificateResponse:
    """A new certificate for an authenticated agent (by certificate or bearer), unless revoked."""
    async with store.transaction() as tx:
        instance = await tx.get_instance(identity.instance_id, for_update=True)
        if instance is not None and instance.revoked and instance.account_id == identity.account_id:
            raise Unauthenticated(agents.REVOKED_BY_CANCEL)
        if instance is None or instance.account_id != identity.account_id:
            raise Unauthenticated("credential refused: unknown instance")
        certificate = await issue(
            tx, issuer, request.csr_pem, account_id=instance.account_id, instance_id=instance.instance_id
        )
    return gateway_pb2.RenewCertificateResponse(certificate=certificate)


async def authenticate_certificate(cert_pem: bytes | None, *, store: GatewayStore, clock: Clock) -> Identity:
    """The agent a verified client certificate names, unless expired, unknown or denied."""
    if cert_pem is None:
        raise Unauthenticated("this listener needs the agent's client certificate")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise Unauthenticated("unreadable client certificate") from None
    named = agent_identity(cert)
    if named is None:
        raise Unauthenticated("the client certificate names no agent")
    if cert.not_valid_after_utc <= clock.now():
        raise Unauthenticated("agent certificate expired: renew it with the bearer credential")
    async with store.transaction() as tx:
        status = await tx.certificate_status(serial_hex(cert))
    if status is None:
        # Signed by the agent CA yet never recorded: a leaked CA key or a restored database.
        log.warning("refused an agent certificate with unknown serial %s for %s/%s", serial_hex(cert), *named)
        raise Unauthenticated("unknown agent certificate")
    record = status.certificate
    if status.instance_revoked:
        # the instance's backup was canceled: the agent uninstalls itself on this (ADR 0040)
        raise Unauthenticated(f"agent certificate revoked: {agents.CANCELED}")
    if record.revoked_at is not None:
        raise Unauthenticated("agent certificate revoked")
    if (record.account_id, record.instance_id) != named:
        raise Unauthenticated("unknown agent certificate")
    return Identity(record.instance_id, record.account_id)


def certificate_authenticator(store: GatewayStore, clock: Clock) -> AgentAuthenticator:
    """The agent check of the interceptor on the agent mTLS listener: the certificate only."""

    async def check(call: AgentCall) -> Principal:
        identity = await authenticate_certificate(call.peer_certificate_pem(), store=store, clock=clock)
        return agent_principal(identity.account_id, identity.instance_id)

    return check


def bearer_authenticator(store: GatewayStore, *, data_calls: bool = True) -> AgentAuthenticator:
    """The agent check on the server-TLS listener: the bearer credential (ADR 0004).

    With ``data_calls`` false (``STRONGROOM_GATEWAY_AGENT_BEARER=renew``, once every agent has a
    certificate) the bearer is good for ``RenewCertificate`` only.
    """

    async def check(call: AgentCall) -> Principal:
        identity = await agents.authenticate(call.bearer, store=store)
        if not data_calls and call.method != RENEW_METHOD:
            raise PermissionDenied("agents call this gateway over mTLS; the bearer credential only renews certificates")
        return agent_principal(identity.account_id, identity.instance_id)

    return check


async def revoke(
    request: agent_admin_pb2.RevokeAgentCertificatesRequest,
    *,
    store: GatewayStore,
    clock: Clock,
    sessions: SessionRegistry,
) -> agent_admin_pb2.RevokeAgentCertificatesResponse:
    """The admin revocation: deny the certificates, drop the bearer, close the agent's stream."""
    if not request.instance_id:
        raise InvalidArgument("instance_id is required")
    serial = request.serial.strip().lower() or None
    reason = request.reason.strip() or "revoked by an administrator"
    async with store.transaction() as tx:
        instance = await tx.get_instance(request.instance_id, for_update=True)
        if instance is None:
            raise NotFound(f"instance {request.instance_id} not found")
        revoked = await tx.revoke_certificates(instance.instance_id, now=clock.now(), reason=reason, serial=serial)
        if serial is not None and not revoked:
            raise NotFound(f"no unexpired, unrevoked certificate {serial} of instance {instance.instance_id}")
        await tx.clear_credential(instance.instance_id)
    log.warning("revoked agent certificates %s of instance %s: %s", revoked, instance.instance_id, reason)
    sessions.disconnect(instance.instance_id, f"credential revoked: {reason}")
    return agent_admin_pb2.RevokeAgentCertificatesResponse(revoked_serials=revoked)


def enrollment_issuer(issuer: CertificateIssuer | None, csr_pem: bytes) -> agents.IssueAtEnrollment | None:
    """What ``agents.enroll`` calls inside its transaction to issue the first certificate, if any."""
    if issuer is None or not csr_pem:
        return None
    # Checked before the token is consumed: a bad CSR leaves the token usable.
    issuer.sign(csr_pem, "check", "check")

    async def issue_now(tx: GatewayTx, account_id: str, instance_id: str) -> gateway_pb2.AgentCertificate:
        return await issue(tx, issuer, csr_pem, account_id=account_id, instance_id=instance_id)

    return issue_now
