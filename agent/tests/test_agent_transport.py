"""The agent trusts only the gateway its enrollment pinned (ADR 0023): TLS, CA bundle, SPKI pins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from strongroom.agent.v1 import gateway_pb2, gateway_pb2_grpc
from strongroom_agent.__main__ import EXIT_REJECTED, run_cli
from strongroom_agent.config import load_state
from strongroom_agent.transport import GatewayTrust, PinMismatch, pinned_roots, spki_pin
from strongroom_platform.certs import CertificateAuthority, spki_sha256

TOKEN = "enroll-me"


class Enrollments(gateway_pb2_grpc.AgentGatewayServiceServicer):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def Enroll(self, request: Any, context: Any) -> gateway_pb2.EnrollResponse:  # noqa: N802
        self.tokens.append(request.enrollment_token)
        return gateway_pb2.EnrollResponse(instance_id="i-1", credential="secret")


@dataclass
class TlsGateway:
    address: str
    ca: CertificateAuthority
    ca_file: Path
    servicer: Enrollments = field(default_factory=Enrollments)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[TlsGateway]:
    ca = CertificateAuthority.create(common_name="gateway CA")
    pair = ca.issue_service("gateway", ips=["127.0.0.1"])
    servicer = Enrollments()
    server = grpc.aio.server()
    gateway_pb2_grpc.add_AgentGatewayServiceServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(pair.key_pem, pair.cert_pem)])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    ca_file = tmp_path / "gateway-ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    try:
        yield TlsGateway(f"127.0.0.1:{port}", ca, ca_file, servicer)
    finally:
        await server.stop(None)


def enroll(gateway: TlsGateway, state_dir: Path, *extra: str) -> int:
    return run_cli(["enroll", "--gateway", gateway.address, "--token", TOKEN, "--state-dir", str(state_dir), *extra])


def test_the_agents_pin_is_the_platforms_pin() -> None:
    ca = CertificateAuthority.create()
    assert spki_pin(ca.certificate) == spki_sha256(ca.cert_pem)


async def test_a_pinned_ca_enrolls_and_is_kept_for_later_connections(gateway: TlsGateway, tmp_path: Path) -> None:
    pin = spki_sha256(gateway.ca.cert_pem)
    code = await asyncio.to_thread(enroll, gateway, tmp_path / "s", "--ca-file", str(gateway.ca_file), "--pin", pin)
    assert code == 0
    assert gateway.servicer.tokens == [TOKEN]
    state = load_state(str(tmp_path / "s"))
    assert state.gateway_pins == (pin,) and not state.plaintext
    assert state.trust.ca_pem == gateway.ca.cert_pem


async def test_a_gateway_of_another_ca_never_sees_the_token(
    gateway: TlsGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The interception case: the agent holds a bundle and pins, the server's certificate chains elsewhere."""
    impostor_ca = CertificateAuthority.create(common_name="impostor")
    bundle = tmp_path / "impostor.pem"
    bundle.write_bytes(impostor_ca.cert_pem)
    pin = spki_sha256(impostor_ca.cert_pem)
    code = await asyncio.to_thread(enroll, gateway, tmp_path / "s", "--ca-file", str(bundle), "--pin", pin)
    assert code != 0
    assert gateway.servicer.tokens == []
    assert not (tmp_path / "s").exists()
    assert "cannot reach the gateway" in capsys.readouterr().err


async def test_a_bundle_without_the_pinned_ca_is_refused_before_connecting(
    gateway: TlsGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = spki_sha256(CertificateAuthority.create().cert_pem)
    code = await asyncio.to_thread(enroll, gateway, tmp_path / "s", "--ca-file", str(gateway.ca_file), "--pin", other)
    assert code == EXIT_REJECTED
    assert "matches the enrollment's pins" in capsys.readouterr().err
    assert gateway.servicer.tokens == []


async def test_plaintext_to_a_tls_gateway_fails_and_sends_nothing_usable(gateway: TlsGateway, tmp_path: Path) -> None:
    code = await asyncio.to_thread(enroll, gateway, tmp_path / "s", "--insecure-plaintext")
    assert code != 0
    assert gateway.servicer.tokens == []


def test_pinned_roots_keeps_only_pinned_cas() -> None:
    first, second = CertificateAuthority.create(), CertificateAuthority.create()
    bundle = first.cert_pem + second.cert_pem
    kept = pinned_roots(bundle, [spki_sha256(second.cert_pem)])
    assert spki_sha256(kept) == spki_sha256(second.cert_pem)
    with pytest.raises(PinMismatch):
        pinned_roots(bundle, ["AAAA"])
    assert GatewayTrust().ca_pem is None
