"""Agent identity by client certificate (ADR 0028), over real TLS listeners.

The gateway serves three listeners as in production: the server-TLS one (Enroll, bearer renewal),
the agent mTLS one (client CA = the agent CA, the certificate authenticator) and the internal one
(the service CA, AgentAdminService). The clock of the gateway is a fake one started at the real
time, because the TLS handshake checks validity against the wall clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from gateway_helpers import AGENT_VERSION, GatewayHarness, meta
from strongroom.agent.v1 import gateway_pb2, gateway_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.gateway.v1 import agent_admin_pb2, agent_admin_pb2_grpc
from strongroom_gateway import agent_certs, vault_format
from strongroom_gateway.agent_certs import CertificateIssuer, serial_hex
from strongroom_gateway.grpc_api import AgentAdminServicer, GatewayServicer, register, register_admin
from strongroom_gateway.ports import InstanceFilesystem
from strongroom_gateway.vault import Vault
from strongroom_platform import events
from strongroom_platform.auth import AgentCall, Authenticator, AuthInterceptor
from strongroom_platform.certs import (
    CA_CERT_FILE,
    CertificateAuthority,
    agent_identity,
    ensure_agent_ca,
    ensure_local_pki,
    load_ca_files,
    pair_paths,
)
from strongroom_platform.runtime import start_grpc_server
from strongroom_platform.settings import TlsSettings
from strongroom_platform.testing import FakeClock, InMemoryAuditSink
from strongroom_platform.tls import server_credentials

FIND = gateway_pb2.FindMissingChunksRequest(job_id="no-such-job", chunk_ids=[])


def key_and_csr() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem, csr.public_bytes(serialization.Encoding.PEM)


@dataclasses.dataclass
class Listeners:
    gw: GatewayHarness
    pki: Path
    issuer: CertificateIssuer
    public: str
    mtls: str
    internal: str
    channels: list[grpc.aio.Channel] = dataclasses.field(default_factory=list)
    audited: InMemoryAuditSink = dataclasses.field(default_factory=InMemoryAuditSink)

    @property
    def ca_pem(self) -> bytes:
        return (self.pki / CA_CERT_FILE).read_bytes()

    def public_stub(self) -> gateway_pb2_grpc.AgentGatewayServiceStub:
        channel = grpc.aio.secure_channel(self.public, grpc.ssl_channel_credentials(self.ca_pem))
        self.channels.append(channel)
        return gateway_pb2_grpc.AgentGatewayServiceStub(channel)

    def mtls_stub(self, cert_pem: bytes, key_pem: bytes) -> gateway_pb2_grpc.AgentGatewayServiceStub:
        credentials = grpc.ssl_channel_credentials(self.ca_pem, private_key=key_pem, certificate_chain=cert_pem)
        channel = grpc.aio.secure_channel(self.mtls, credentials)
        self.channels.append(channel)
        return gateway_pb2_grpc.AgentGatewayServiceStub(channel)

    def admin_stub(self, name: str = "admin") -> agent_admin_pb2_grpc.AgentAdminServiceStub:
        pair = CertificateAuthority(*_ca_parts(self.pki)).issue_client(name, uri=f"spiffe://strongroom/service/{name}")
        credentials = grpc.ssl_channel_credentials(
            self.ca_pem, private_key=pair.key_pem, certificate_chain=pair.cert_pem
        )
        channel = grpc.aio.secure_channel(self.internal, credentials)
        self.channels.append(channel)
        return agent_admin_pb2_grpc.AgentAdminServiceStub(channel)

    async def enroll(self, instance_id: str) -> tuple[gateway_pb2.EnrollResponse, bytes]:
        token = await self.gw.activate(instance_id, "acct-a")
        key_pem, csr_pem = key_and_csr()
        request = gateway_pb2.EnrollRequest(
            enrollment_token=token, hostname=instance_id, csr_pem=csr_pem, agent_version=AGENT_VERSION
        )
        return await self.public_stub().Enroll(request), key_pem


def _ca_parts(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca = load_ca_files(pki / CA_CERT_FILE, pki / "ca-key.pem")
    return ca.certificate, ca.key


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))


@pytest.fixture
async def listeners(clock: FakeClock, tmp_path: Path) -> AsyncIterator[Listeners]:
    pki = tmp_path / "pki"
    ensure_local_pki(pki, ["gateway"])
    agent_ca_cert, agent_ca_key = ensure_agent_ca(pki)
    gw = GatewayHarness(clock)
    await gw.start()  # the plaintext harness server is not used here; its store, writer and handlers are
    issuer = CertificateIssuer(
        load_ca_files(agent_ca_cert, agent_ca_key), clock, gateway_ca_pem=(pki / CA_CERT_FILE).read_bytes()
    )
    servicer = GatewayServicer(
        store=gw.store, object_store=gw.objects, clock=clock, sessions=gw.sessions, writer=gw.writer, issuer=issuer
    )
    cert, key = pair_paths(pki, "gateway")
    tls = TlsSettings(cert_file=cert, key_file=key, ca_file=pki / CA_CERT_FILE)
    audited = InMemoryAuditSink(clock)
    bearer = AuthInterceptor(
        Authenticator(tokens=None, agents=agent_certs.bearer_authenticator(gw.store)), audit_sink=audited
    )
    by_cert = AuthInterceptor(Authenticator(tokens=None, agents=agent_certs.certificate_authenticator(gw.store, clock)))
    public, public_port = await start_grpc_server(
        "127.0.0.1:0", register(servicer), credentials=server_credentials(tls), interceptors=[bearer]
    )
    mtls, mtls_port = await start_grpc_server(
        "127.0.0.1:0",
        register(servicer),
        credentials=server_credentials(dataclasses.replace(tls, client_ca_file=agent_ca_cert)),
        interceptors=[by_cert],
    )
    vault = Vault(gw.store, gw.objects, gw.keys, clock)
    admin = register_admin(AgentAdminServicer(store=gw.store, clock=clock, sessions=gw.sessions, vault=vault))
    internal, internal_port = await start_grpc_server(
        "127.0.0.1:0",
        admin,
        credentials=server_credentials(dataclasses.replace(tls, client_ca_file=pki / CA_CERT_FILE)),
        interceptors=[bearer],
    )
    issuer.mtls_address = f":{mtls_port}"
    result = Listeners(
        gw, pki, issuer, f"127.0.0.1:{public_port}", f"127.0.0.1:{mtls_port}", f"127.0.0.1:{internal_port}"
    )
    result.audited = audited
    try:
        yield result
    finally:
        for channel in result.channels:
            await channel.close()
        for server in (public, mtls, internal):
            await server.stop(None)
        await gw.stop()


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_enrollment_returns_a_certificate_the_mtls_listener_accepts(listeners: Listeners) -> None:
    response, key_pem = await listeners.enroll("i-1")
    issued = response.certificate
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert agent_identity(cert) == ("acct-a", "i-1")
    assert cert.not_valid_after_utc - listeners.gw.clock.now() == dt.timedelta(days=7)
    assert issued.mtls_address == listeners.issuer.mtls_address
    assert list(issued.gateway_ca_pins) and issued.gateway_ca_pem == listeners.ca_pem
    assert serial_hex(cert) in listeners.gw.store.state.certificates
    stub = listeners.mtls_stub(bytes(issued.certificate_pem), key_pem)
    # Past authentication: the call fails only on the unknown job.
    assert await _code(stub.FindMissingChunks(FIND)) == grpc.StatusCode.NOT_FOUND
    # No certificate at all: the handshake fails.
    no_cert = gateway_pb2_grpc.AgentGatewayServiceStub(
        grpc.aio.secure_channel(listeners.mtls, grpc.ssl_channel_credentials(listeners.ca_pem))
    )
    assert await _code(no_cert.FindMissingChunks(FIND, timeout=5)) == grpc.StatusCode.UNAVAILABLE


async def test_a_bad_csr_is_refused_and_leaves_the_token_usable(listeners: Listeners) -> None:
    token = await listeners.gw.activate("i-1", "acct-a")
    stub = listeners.public_stub()
    bad = gateway_pb2.EnrollRequest(
        enrollment_token=token, csr_pem=b"-----BEGIN CERTIFICATE REQUEST-----\nxx", agent_version=AGENT_VERSION
    )
    assert await _code(stub.Enroll(bad)) == grpc.StatusCode.INVALID_ARGUMENT
    _, csr = key_and_csr()
    assert (
        await stub.Enroll(gateway_pb2.EnrollRequest(enrollment_token=token, csr_pem=csr, agent_version=AGENT_VERSION))
    ).certificate.certificate_pem


async def test_a_certificate_from_another_ca_is_refused(listeners: Listeners) -> None:
    key_pem, csr_pem = key_and_csr()
    await listeners.enroll("i-1")
    other = CertificateAuthority.create("Not the agent CA")
    forged = other.sign_agent_csr(csr_pem, account_id="acct-a", instance_id="i-1")
    stub = listeners.mtls_stub(forged.public_bytes(serialization.Encoding.PEM), key_pem)
    assert await _code(stub.FindMissingChunks(FIND, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    # The service CA's certificates are no agent's either.
    service_ca = CertificateAuthority(*_ca_parts(listeners.pki))
    as_service = service_ca.sign_agent_csr(csr_pem, account_id="acct-a", instance_id="i-1")
    stub = listeners.mtls_stub(as_service.public_bytes(serialization.Encoding.PEM), key_pem)
    assert await _code(stub.FindMissingChunks(FIND, timeout=5)) == grpc.StatusCode.UNAVAILABLE


async def test_an_unrecorded_certificate_of_the_agent_ca_is_refused(listeners: Listeners) -> None:
    await listeners.enroll("i-1")
    key_pem, csr_pem = key_and_csr()
    unrecorded = listeners.issuer.sign(csr_pem, "acct-a", "i-1")  # signed, never recorded
    stub = listeners.mtls_stub(unrecorded.public_bytes(serialization.Encoding.PEM), key_pem)
    assert await _code(stub.FindMissingChunks(FIND)) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_revoked_serial_is_refused_and_the_bearer_no_longer_renews(listeners: Listeners) -> None:
    response, key_pem = await listeners.enroll("i-1")
    other, other_key = await listeners.enroll("i-2")
    stub = listeners.mtls_stub(bytes(response.certificate.certificate_pem), key_pem)
    assert await _code(stub.FindMissingChunks(FIND)) == grpc.StatusCode.NOT_FOUND
    serial = serial_hex(x509.load_pem_x509_certificate(response.certificate.certificate_pem))

    # Only the "admin" identity may revoke; another service is refused.
    request = agent_admin_pb2.RevokeAgentCertificatesRequest(instance_id="i-1", serial=serial, reason="key leaked")
    assert await _code(listeners.admin_stub("catalog").RevokeAgentCertificates(request)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    revoked = await listeners.admin_stub().RevokeAgentCertificates(request)
    assert list(revoked.revoked_serials) == [serial]
    # the revocation is in the audit trail (a caller the rule does not admit is refused before it
    # is a principal, like a missing credential, and is not recorded: ADR 0027)
    recorded = [(e.subject, e.result_code) for e in listeners.audited.events if e.method.endswith("Certificates")]
    assert recorded == [("service:admin", "OK")]

    assert await _code(stub.FindMissingChunks(FIND)) == grpc.StatusCode.UNAUTHENTICATED
    _, csr = key_and_csr()
    renew = gateway_pb2.RenewCertificateRequest(csr_pem=csr)
    assert await _code(stub.RenewCertificate(renew)) == grpc.StatusCode.UNAUTHENTICATED
    bearer = (("authorization", f"Bearer i-1.{response.credential}"),)
    assert await _code(listeners.public_stub().RenewCertificate(renew, metadata=bearer)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    # Another agent is untouched.
    other_stub = listeners.mtls_stub(bytes(other.certificate.certificate_pem), other_key)
    assert await _code(other_stub.FindMissingChunks(FIND)) == grpc.StatusCode.NOT_FOUND


async def test_cancel_denies_the_certificates_and_refuses_bearer_renewal(listeners: Listeners) -> None:
    response, key_pem = await listeners.enroll("i-1")
    await listeners.gw.deliver(
        events.INSTANCE_DEACTIVATED, events_pb2.InstanceDeactivated(meta=meta(), account_id="acct-a", instance_id="i-1")
    )
    [record] = listeners.gw.store.state.certificates.values()
    assert record.revoked_at is not None and record.revoke_reason == "backup canceled"
    stub = listeners.mtls_stub(bytes(response.certificate.certificate_pem), key_pem)
    assert await _code(stub.FindMissingChunks(FIND)) == grpc.StatusCode.UNAUTHENTICATED
    _, csr = key_and_csr()
    bearer = (("authorization", f"Bearer i-1.{response.credential}"),)
    renew = listeners.public_stub().RenewCertificate(gateway_pb2.RenewCertificateRequest(csr_pem=csr), metadata=bearer)
    assert await _code(renew) == grpc.StatusCode.UNAUTHENTICATED
    # Re-activation gives a new token; the old certificate stays denied.
    await listeners.enroll("i-1")
    assert await _code(stub.FindMissingChunks(FIND)) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_certificate_expired_by_the_gateway_clock_is_refused(listeners: Listeners) -> None:
    response, key_pem = await listeners.enroll("i-1")
    stub = listeners.mtls_stub(bytes(response.certificate.certificate_pem), key_pem)
    listeners.gw.clock.advance(days=7, seconds=1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.FindMissingChunks(FIND)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (err.value.details() or "")


async def test_an_expired_certificate_fails_the_handshake_and_the_bearer_renews_it(listeners: Listeners) -> None:
    listeners.issuer.validity = dt.timedelta(seconds=2)
    response, key_pem = await listeners.enroll("i-1")
    listeners.issuer.validity = dt.timedelta(days=7)
    await asyncio.sleep(2.5)  # past the certificate's end by the wall clock, which the handshake uses
    expired = listeners.mtls_stub(bytes(response.certificate.certificate_pem), key_pem)
    assert await _code(expired.FindMissingChunks(FIND, timeout=5)) == grpc.StatusCode.UNAVAILABLE

    new_key, csr = key_and_csr()
    bearer = (("authorization", f"Bearer i-1.{response.credential}"),)
    renewed = await listeners.public_stub().RenewCertificate(
        gateway_pb2.RenewCertificateRequest(csr_pem=csr), metadata=bearer
    )
    cert = x509.load_pem_x509_certificate(renewed.certificate.certificate_pem)
    assert agent_identity(cert) == ("acct-a", "i-1")
    stub = listeners.mtls_stub(bytes(renewed.certificate.certificate_pem), new_key)
    assert await _code(stub.FindMissingChunks(FIND)) == grpc.StatusCode.NOT_FOUND
    # Renewal over mTLS with the new certificate works too.
    _, csr2 = key_and_csr()
    again = await stub.RenewCertificate(gateway_pb2.RenewCertificateRequest(csr_pem=csr2))
    assert again.certificate.certificate_pem != renewed.certificate.certificate_pem


async def test_bearer_can_be_limited_to_renewal(listeners: Listeners) -> None:
    response, _ = await listeners.enroll("i-1")
    check = agent_certs.bearer_authenticator(listeners.gw.store, data_calls=False)
    bearer = f"Bearer i-1.{response.credential}"
    principal = await check(AgentCall(agent_certs.RENEW_METHOD, bearer, {}))
    assert principal.agent_instance == "i-1"
    with pytest.raises(Exception, match="over mTLS"):
        await check(AgentCall("/strongroom.agent.v1.AgentGatewayService/UploadChunks", bearer, {}))


async def test_an_admin_lists_and_approves_a_pending_filesystem_and_the_dr_record_follows(
    listeners: Listeners, clock: FakeClock
) -> None:
    await listeners.enroll("i-1")
    new_disk = common_pb2.Filesystem(mount_point="/data2", device="/dev/vdc1", fs_type="xfs")
    async with listeners.gw.store.transaction() as tx:
        await tx.add_instance_filesystem(
            InstanceFilesystem("i-1", "/data2", new_disk.SerializeToString(), False, clock.now())
        )
    listing = agent_admin_pb2.ListInstanceFilesystemsRequest(instance_id="i-1", pending_only=True)
    approval = agent_admin_pb2.ApproveInstanceFilesystemRequest(instance_id="i-1", mount_point="/data2")
    # Another service identity may neither read nor approve.
    catalog = listeners.admin_stub("catalog")
    assert await _code(catalog.ListInstanceFilesystems(listing)) == grpc.StatusCode.PERMISSION_DENIED
    assert await _code(catalog.ApproveInstanceFilesystem(approval)) == grpc.StatusCode.PERMISSION_DENIED

    admin = listeners.admin_stub()
    clock.advance(1)  # records are named by the time they are written: the approval's sorts last
    pending = await admin.ListInstanceFilesystems(listing)
    assert [(f.filesystem.mount_point, f.approved) for f in pending.filesystems] == [("/data2", False)]
    approved = await admin.ApproveInstanceFilesystem(approval)
    assert approved.approved and approved.filesystem == new_disk and approved.HasField("approved_at")
    assert not (await admin.ListInstanceFilesystems(listing)).filesystems
    recorded = [(e.subject, e.result_code, dict(e.resources)) for e in listeners.audited.events]
    assert ("service:admin", "OK", {"instance_id": "i-1", "mount_point": "/data2"}) in recorded

    # The instance's disaster-recovery record says so.
    keys = [k async for k in listeners.gw.objects.list("vault/instances/acct-a/i-1/")]
    newest = await listeners.gw.objects.get(keys[-1])
    record = vault_format.open_instance_record(await listeners.gw.data_key("acct-a"), "i-1", newest)
    assert ("/data2", True) in [(f.filesystem.mount_point, f.approved) for f in record.filesystems]

    unknown = agent_admin_pb2.ApproveInstanceFilesystemRequest(instance_id="i-1", mount_point="/nope")
    assert await _code(admin.ApproveInstanceFilesystem(unknown)) == grpc.StatusCode.NOT_FOUND
    hostile = agent_admin_pb2.ApproveInstanceFilesystemRequest(instance_id="i-1", mount_point="/a\x00b")
    assert await _code(admin.ApproveInstanceFilesystem(hostile)) == grpc.StatusCode.INVALID_ARGUMENT
    missing = agent_admin_pb2.ListInstanceFilesystemsRequest(instance_id="i-404")
    assert await _code(admin.ListInstanceFilesystems(missing)) == grpc.StatusCode.NOT_FOUND
