"""TLS on gRPC listeners: the built-in CA, reloading server credentials, mutual TLS, pinning, the plaintext policy.

Every test runs a real grpc.aio server through ``start_grpc_server`` on 127.0.0.1 and real TLS
handshakes; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from aiokafka.errors import KafkaConnectionError
from cryptography import x509
from strongroom_platform import certs
from strongroom_platform.certs import CertificateAuthority, IssuedPair, spki_sha256
from strongroom_platform.clock import utc
from strongroom_platform.eventbus import Record
from strongroom_platform.eventbus_kafka import FaustConsumer, KafkaPublisher
from strongroom_platform.runtime import start_grpc_server
from strongroom_platform.settings import BackendTls, PlaintextRefused, PlatformSettings, SettingsError, TlsSettings
from strongroom_platform.testing import FakeClock
from strongroom_platform.tls import (
    PinMismatch,
    ReloadingServerCertificates,
    backend_ssl_context,
    channel_credentials,
    client_ssl_context,
    fetch_peer_certificate,
    listener_credentials,
    pinned_roots,
    secure_channel,
    server_credentials,
)

HOST = "127.0.0.1"
METHOD = "/probe.v1.Probe/Whoami"


def _whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    """Echoes the request and names the verified client certificate's URI SAN (or "-")."""
    auth = context.auth_context()
    sans = [v.decode() for v in auth.get("x509_subject_alternative_name", [])]
    uris = [s for s in sans if s.startswith("spiffe://")]
    return request + b"|" + (uris[0].encode() if uris else b"-")


def register(server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(_whoami)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("probe.v1.Probe", {"Whoami": handler}),))


async def call(channel: grpc.aio.Channel, payload: bytes = b"hi") -> bytes:
    method = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    response: bytes = await method(payload, timeout=5, wait_for_ready=False)
    return response


@dataclass
class Pki:
    directory: Path
    ca: CertificateAuthority
    ca_file: Path
    cert_file: Path
    key_file: Path

    def issue_server(self) -> IssuedPair:
        return self.ca.issue_service("gateway", dns=["localhost"], ips=[HOST])


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority.create()
    ca_file = certs.write_ca(tmp_path, ca)
    pair = ca.issue_service("gateway", dns=["localhost"], ips=[HOST])
    cert_file, key_file = certs.write_pair(tmp_path, "gateway", pair)
    return Pki(tmp_path, ca, ca_file, cert_file, key_file)


Serve = Callable[[grpc.ServerCredentials | None], Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts probe servers through ``start_grpc_server``; returns the port; stops them at the end."""
    servers: list[grpc.aio.Server] = []

    async def start(credentials: grpc.ServerCredentials | None) -> int:
        server, port = await start_grpc_server(f"{HOST}:0", register, credentials=credentials)
        servers.append(server)
        return port

    yield start
    for server in servers:
        await server.stop(None)


async def test_tls_client_trusting_the_ca_gets_through(pki: Pki, serve: Serve) -> None:
    port = await serve(server_credentials(TlsSettings(pki.cert_file, pki.key_file)))
    creds = channel_credentials(ca_pem=pki.ca_file.read_bytes())
    async with grpc.aio.secure_channel(f"{HOST}:{port}", creds) as channel:
        assert await call(channel) == b"hi|-"
    # the host name is verified too: "localhost" is a SAN, "gateway" is not reachable, an IP SAN is.
    async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
        assert await call(channel) == b"hi|-"


async def test_plaintext_client_is_refused(pki: Pki, serve: Serve) -> None:
    port = await serve(server_credentials(TlsSettings(pki.cert_file, pki.key_file)))
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_trusting_another_ca_is_refused(pki: Pki, serve: Serve) -> None:
    port = await serve(server_credentials(TlsSettings(pki.cert_file, pki.key_file)))
    other = CertificateAuthority.create("Other CA")
    async with grpc.aio.secure_channel(f"{HOST}:{port}", channel_credentials(ca_pem=other.cert_pem)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ssl.SSLCertVerificationError):
        fetch_peer_certificate(HOST, port, ca_pem=other.cert_pem)


async def test_server_certificate_for_another_name_is_refused(pki: Pki, serve: Serve, tmp_path: Path) -> None:
    pair = pki.ca.issue_service("catalog", dns=["catalog.internal"])  # no 127.0.0.1 SAN
    cert_file, key_file = certs.write_pair(tmp_path, "catalog", pair)
    port = await serve(server_credentials(TlsSettings(cert_file, key_file)))
    async with grpc.aio.secure_channel(f"{HOST}:{port}", channel_credentials(ca_pem=pki.ca.cert_pem)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate_of_the_client_ca(pki: Pki, serve: Serve) -> None:
    tls = TlsSettings(pki.cert_file, pki.key_file, ca_file=pki.ca_file, client_ca_file=pki.ca_file)
    assert tls.require_client_cert
    port = await serve(server_credentials(tls))
    target = f"{HOST}:{port}"
    ca_pem = pki.ca.cert_pem

    catalog = pki.ca.issue_service("catalog", ips=[HOST])
    creds = channel_credentials(ca_pem=ca_pem, cert_pem=catalog.cert_pem, key_pem=catalog.key_pem)
    async with grpc.aio.secure_channel(target, creds) as channel:
        # the server sees the caller's service identity (what the auth layer will authorize)
        assert await call(channel) == b"hi|spiffe://strongroom/service/catalog"

    async with grpc.aio.secure_channel(target, channel_credentials(ca_pem=ca_pem)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as no_cert:
            await call(channel)
    assert no_cert.value.code() == grpc.StatusCode.UNAVAILABLE

    foreign = CertificateAuthority.create("Foreign CA").issue_service("catalog", ips=[HOST])
    creds = channel_credentials(ca_pem=ca_pem, cert_pem=foreign.cert_pem, key_pem=foreign.key_pem)
    async with grpc.aio.secure_channel(target, creds) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as foreign_cert:
            await call(channel)
    assert foreign_cert.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_service_to_service_channel_from_settings_presents_the_service_certificate(
    pki: Pki, serve: Serve, tmp_path: Path
) -> None:
    server_tls = TlsSettings(pki.cert_file, pki.key_file, client_ca_file=pki.ca_file)
    port = await serve(server_credentials(server_tls))
    cert_file, key_file = certs.write_pair(tmp_path, "restore", pki.ca.issue_service("restore"))
    client_tls = TlsSettings(cert_file, key_file, ca_file=pki.ca_file)
    async with secure_channel(f"{HOST}:{port}", client_tls, insecure_plaintext=False) as channel:
        assert await call(channel) == b"hi|spiffe://strongroom/service/restore"


async def test_renewed_files_are_served_to_new_connections_without_a_restart(pki: Pki, serve: Serve) -> None:
    port = await serve(server_credentials(TlsSettings(pki.cert_file, pki.key_file)))
    ca_pem = pki.ca.cert_pem
    first = fetch_peer_certificate(HOST, port, ca_pem=ca_pem)
    assert first.serial_number == x509.load_pem_x509_certificate(pki.cert_file.read_bytes()).serial_number
    async with grpc.aio.secure_channel(f"{HOST}:{port}", channel_credentials(ca_pem=ca_pem)) as channel:
        assert await call(channel) == b"hi|-"

        renewed = pki.issue_server()
        certs.write_pair(pki.directory, "gateway", renewed)

        second = fetch_peer_certificate(HOST, port, ca_pem=ca_pem)
        assert second.serial_number == renewed.certificate.serial_number != first.serial_number
        # the connection opened before the renewal keeps working
        assert await call(channel, b"again") == b"again|-"
    async with grpc.aio.secure_channel(f"{HOST}:{port}", channel_credentials(ca_pem=ca_pem)) as channel:
        assert await call(channel) == b"hi|-"


async def test_a_half_renewed_pair_is_not_served(pki: Pki, serve: Serve) -> None:
    port = await serve(server_credentials(TlsSettings(pki.cert_file, pki.key_file)))
    ca_pem = pki.ca.cert_pem
    serving = fetch_peer_certificate(HOST, port, ca_pem=ca_pem).serial_number
    renewed = pki.issue_server()
    certs.write_public(pki.cert_file, renewed.cert_pem)  # certificate written, key not yet
    assert fetch_peer_certificate(HOST, port, ca_pem=ca_pem).serial_number == serving
    certs.write_private(pki.key_file, renewed.key_pem)
    assert fetch_peer_certificate(HOST, port, ca_pem=ca_pem).serial_number == renewed.certificate.serial_number


def test_reloader_reports_no_change_until_the_files_change(pki: Pki) -> None:
    reloader = ReloadingServerCertificates(pki.cert_file, pki.key_file)
    assert reloader.fetch() is None
    certs.write_pair(pki.directory, "gateway", pki.issue_server())
    assert reloader.fetch() is not None
    assert reloader.fetch() is None
    pki.key_file.write_bytes(b"not a key")
    assert reloader.fetch() is None  # broken files: the current pair stays


def test_reloader_refuses_unusable_files_at_start(pki: Pki, tmp_path: Path) -> None:
    other_key = pki.ca.issue_service("other").key_pem
    mismatched = tmp_path / "other-key.pem"
    certs.write_private(mismatched, other_key)
    with pytest.raises(ValueError, match="does not belong"):
        ReloadingServerCertificates(pki.cert_file, mismatched)
    with pytest.raises(FileNotFoundError):
        ReloadingServerCertificates(tmp_path / "missing.pem", pki.key_file)


# -- pinning -------------------------------------------------------------------------------------


def _spki_by_hand(der: bytes) -> str:
    """The SPKI pin computed from the certificate's DER by walking the ASN.1 (no X.509 library)."""

    def tlv(data: bytes, at: int) -> tuple[int, int, int]:
        """(start of content, end of element, tag) of the element at ``at``."""
        tag, length = data[at], data[at + 1]
        start = at + 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[start : start + count], "big")
            start += count
        return start, start + length, tag

    cert_content, _, _ = tlv(der, 0)  # Certificate ::= SEQUENCE
    at, tbs_end, _ = tlv(der, cert_content)  # tbsCertificate ::= SEQUENCE
    fields = []
    while at < tbs_end:
        _, end, tag = tlv(der, at)
        fields.append((at, end, tag))
        at = end
    if fields[0][2] == 0xA0:  # [0] version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    start, end, tag = fields[5]
    assert tag == 0x30
    return base64.b64encode(hashlib.sha256(der[start:end]).digest()).decode()


def test_spki_pin_matches_an_independent_computation(pki: Pki) -> None:
    for pem in (pki.ca.cert_pem, pki.cert_file.read_bytes()):
        der = ssl.PEM_cert_to_DER_cert(pem.decode())
        expected = _spki_by_hand(der)
        assert spki_sha256(pem) == expected
        assert spki_sha256(der) == expected
        assert spki_sha256(x509.load_der_x509_certificate(der)) == expected
        assert len(base64.b64decode(expected)) == 32
    # renewing a leaf changes its pin; the CA's pin is what survives renewals
    assert spki_sha256(pki.issue_server().cert_pem) != spki_sha256(pki.cert_file.read_bytes())


async def test_pinned_roots_trust_only_the_pinned_ca(pki: Pki, serve: Serve) -> None:
    port = await serve(server_credentials(TlsSettings(pki.cert_file, pki.key_file)))
    other = CertificateAuthority.create("Other CA")
    bundle = other.cert_pem + pki.ca.cert_pem
    roots = pinned_roots(bundle, {spki_sha256(pki.ca.cert_pem), "AAAA"})
    assert x509.load_pem_x509_certificates(roots) == [pki.ca.certificate]
    async with grpc.aio.secure_channel(f"{HOST}:{port}", channel_credentials(ca_pem=roots)) as channel:
        assert await call(channel) == b"hi|-"

    # a gateway whose certificate comes from another CA fails against the pinned roots
    impostor = certs.write_pair(pki.directory, "impostor", other.issue_service("gateway", ips=[HOST]))
    impostor_port = await serve(server_credentials(TlsSettings(*impostor)))
    async with grpc.aio.secure_channel(f"{HOST}:{impostor_port}", channel_credentials(ca_pem=roots)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    with pytest.raises(PinMismatch):
        pinned_roots(bundle, {spki_sha256(pki.cert_file.read_bytes())})


# -- the plaintext policy ------------------------------------------------------------------------


async def test_a_listener_without_tls_is_refused_unless_plaintext_is_explicitly_allowed(pki: Pki, serve: Serve) -> None:
    with pytest.raises(PlaintextRefused, match="STRONGROOM_INSECURE_PLAINTEXT=1"):
        listener_credentials(None, insecure_plaintext=False, listener="catalog gRPC")
    with pytest.raises(PlaintextRefused):  # trust alone is no identity to serve with
        listener_credentials(TlsSettings(ca_file=pki.ca_file), insecure_plaintext=False, listener="catalog gRPC")
    assert listener_credentials(None, insecure_plaintext=True, listener="catalog gRPC") is None
    with pytest.raises(PlaintextRefused):
        secure_channel(f"{HOST}:1", None, insecure_plaintext=False)

    credentials = listener_credentials(
        TlsSettings(pki.cert_file, pki.key_file), insecure_plaintext=False, listener="catalog gRPC"
    )
    port = await serve(credentials)
    assert (
        fetch_peer_certificate(HOST, port, ca_pem=pki.ca.cert_pem).subject
        == pki.ca.issue_service("gateway").certificate.subject
    )


def test_settings_from_the_environment(pki: Pki) -> None:
    base = {"STRONGROOM_PG_DSN": "postgresql://x", "STRONGROOM_KAFKA_BOOTSTRAP": "k:9092"}
    base["STRONGROOM_OBJECT_STORE"] = "file:/x"
    with pytest.raises(PlaintextRefused, match="plaintext needs STRONGROOM_INSECURE_PLAINTEXT=1"):
        PlatformSettings.from_env(base)
    plain = PlatformSettings.from_env({**base, "STRONGROOM_INSECURE_PLAINTEXT": "1"})
    assert (plain.tls, plain.insecure_plaintext, plain.pg_tls.enabled, plain.kafka_tls.enabled) == (
        None,
        True,
        False,
        False,
    )

    tls_env = {
        "STRONGROOM_TLS_CERT": str(pki.cert_file),
        "STRONGROOM_TLS_KEY": str(pki.key_file),
        "STRONGROOM_TLS_CA": str(pki.ca_file),
        "STRONGROOM_TLS_CLIENT_CA": str(pki.ca_file),
        "STRONGROOM_PG_TLS_CA": str(pki.ca_file),
        "STRONGROOM_KAFKA_TLS": "1",
    }
    settings = PlatformSettings.from_env({**base, **tls_env})
    assert settings.tls == TlsSettings(pki.cert_file, pki.key_file, pki.ca_file, pki.ca_file)
    assert settings.tls.require_client_cert
    assert (settings.pg_tls.enabled, settings.pg_tls.ca_file) == (True, pki.ca_file)
    assert (settings.kafka_tls.enabled, settings.kafka_tls.ca_file) == (True, None)

    with pytest.raises(SettingsError, match="contradicts"):
        PlatformSettings.from_env({**base, **tls_env, "STRONGROOM_INSECURE_PLAINTEXT": "1"})
    with pytest.raises(SettingsError, match="STRONGROOM_TLS_CERT and STRONGROOM_TLS_KEY"):
        PlatformSettings.from_env({**base, "STRONGROOM_TLS_CERT": str(pki.cert_file)})
    with pytest.raises(SettingsError, match="CLIENT_CA needs"):
        PlatformSettings.from_env({**base, "STRONGROOM_TLS_CLIENT_CA": str(pki.ca_file)})
    with pytest.raises(SettingsError, match="STRONGROOM_PG_TLS=0 contradicts"):
        PlatformSettings.from_env({**base, "STRONGROOM_PG_TLS": "0", "STRONGROOM_PG_TLS_CA": "/x"})
    # a listener with its own identity reads its own prefix
    agent_port = TlsSettings.from_env(
        {"STRONGROOM_GATEWAY_AGENT_TLS_CERT": "/c", "STRONGROOM_GATEWAY_AGENT_TLS_KEY": "/k"},
        prefix="STRONGROOM_GATEWAY_AGENT_TLS",
    )
    assert agent_port == TlsSettings(Path("/c"), Path("/k"))

    s3_env = {**base, **tls_env, "STRONGROOM_OBJECT_STORE": "s3", "STRONGROOM_S3_ENDPOINT": "s3:9000"}
    s3_env |= {"STRONGROOM_S3_ACCESS_KEY": "a", "STRONGROOM_S3_SECRET_KEY": "s"}
    s3 = PlatformSettings.from_env({**s3_env, "STRONGROOM_S3_TLS_CA": str(pki.ca_file)}).s3
    assert s3 is not None and (s3.secure, s3.ca_file) == (True, pki.ca_file)
    with pytest.raises(SettingsError, match="STRONGROOM_S3_SECURE=0"):
        PlatformSettings.from_env({**s3_env, "STRONGROOM_S3_TLS_CA": "/x", "STRONGROOM_S3_SECURE": "0"})


# -- the CA's files ------------------------------------------------------------------------------


def test_ca_files_round_trip_with_private_keys_0600(pki: Pki) -> None:
    for key_file in (pki.directory / certs.CA_KEY_FILE, pki.key_file):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.ca_file.stat().st_mode) == 0o644
    loaded = certs.load_ca(pki.directory)
    assert loaded.certificate == pki.ca.certificate
    issued = loaded.issue_client("operator", uri="spiffe://strongroom/operator/alice")
    leaf = issued.certificate
    leaf.verify_directly_issued_by(pki.ca.certificate)
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days == certs.CLIENT_VALID_DAYS

    service = pki.ca.issue_service("catalog", dns=["catalog", "catalog.strongroom.svc"], ips=[HOST]).certificate
    sans = service.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["catalog", "catalog.strongroom.svc"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [HOST]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [certs.service_uri("catalog")]
    basic = pki.ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (basic.ca, basic.path_length) == (True, 0)

    with pytest.raises(ValueError, match="invalid certificate name"):
        pki.ca.issue_service("../etc")
    certs.write_private(pki.directory / certs.CA_KEY_FILE, CertificateAuthority.create().key_pem)
    with pytest.raises(ValueError, match="does not belong"):
        certs.load_ca(pki.directory)


# -- Kafka client TLS (a TLS listener stands in for the broker: the handshake is what is checked) --


async def test_kafka_clients_handshake_with_the_backend_context(pki: Pki) -> None:
    handshakes: list[str] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshakes.append(writer.get_extra_info("ssl_object").version())
        writer.close()

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pki.cert_file, pki.key_file)
    broker = await asyncio.start_server(accept, HOST, 0, ssl=server_context)
    bootstrap = f"{HOST}:{broker.sockets[0].getsockname()[1]}"
    try:
        trusted = backend_ssl_context(BackendTls(enabled=True, ca_file=pki.ca_file))
        assert trusted is not None and trusted.check_hostname
        with pytest.raises(KafkaConnectionError):
            await KafkaPublisher(bootstrap, idempotent=False, ssl_context=trusted, request_timeout_ms=2000).start()
        assert handshakes and handshakes[0] in {"TLSv1.2", "TLSv1.3"}

        handshakes.clear()
        foreign = client_ssl_context(ca_file=None)  # the system roots do not know the built-in CA
        with pytest.raises(KafkaConnectionError):
            await KafkaPublisher(bootstrap, idempotent=False, ssl_context=foreign, request_timeout_ms=2000).start()
        assert handshakes == []
    finally:
        broker.close()
        await broker.wait_closed()

    consumer = FaustConsumer(bootstrap, "tls-probe", {"t": _never}, ssl_context=trusted)
    credentials = consumer._app.conf.broker_credentials
    assert (credentials.protocol.value, credentials.context) == ("SSL", trusted)
    assert (
        BackendTls()
        == PlatformSettings.from_env(
            {
                "STRONGROOM_PG_DSN": "x",
                "STRONGROOM_KAFKA_BOOTSTRAP": "y",
                "STRONGROOM_OBJECT_STORE": "file:/x",
                "STRONGROOM_INSECURE_PLAINTEXT": "1",
            }
        ).kafka_tls
    )
    assert backend_ssl_context(BackendTls()) is None


async def _never(record: Record) -> None:
    raise AssertionError("no record is consumed here")


def test_local_pki_is_created_once_and_renewed_when_a_third_of_the_life_is_left(tmp_path: Path) -> None:
    clock = FakeClock(utc(2027, 1, 1))
    files = certs.ensure_local_pki(tmp_path, ["gateway", "catalog"], clock=clock)
    assert set(files) == {"gateway", "catalog"}
    first = x509.load_pem_x509_certificate(files["gateway"][0].read_bytes())
    ca = certs.load_ca(tmp_path)
    first.verify_directly_issued_by(ca.certificate)

    clock.advance(days=30)
    certs.ensure_local_pki(tmp_path, ["gateway"], clock=clock)
    assert x509.load_pem_x509_certificate(files["gateway"][0].read_bytes()) == first

    clock.advance(days=31)  # 61 of 90 days gone
    certs.ensure_local_pki(tmp_path, ["gateway"], clock=clock)
    renewed = x509.load_pem_x509_certificate(files["gateway"][0].read_bytes())
    assert renewed.serial_number != first.serial_number
    assert certs.load_ca(tmp_path).certificate == ca.certificate  # the CA (and so the pin) stays

    files["catalog"][1].write_bytes(certs.CertificateAuthority.create().key_pem)  # a key of another pair
    with pytest.raises(ValueError, match="does not belong"):
        ReloadingServerCertificates(*files["catalog"])
    certs.ensure_local_pki(tmp_path, ["catalog"], clock=clock)
    ReloadingServerCertificates(*files["catalog"])  # a matching pair again
