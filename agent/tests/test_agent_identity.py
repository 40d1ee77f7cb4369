"""The agent's certificate: its file, and its renewal at half-life driven by a fake clock (ADR 0028)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from strongroom.agent.v1 import gateway_pb2
from strongroom_agent.gateway_client import GatewayError
from strongroom_agent.identity import (
    CertificateKeeper,
    ClientCertificate,
    IdentityError,
    identity_path,
    load_identity,
    new_key_and_csr,
    save_identity,
)

START = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
WEEK = dt.timedelta(days=7)


class AgentCa:
    """Signs CSRs as the gateway's agent CA would, at the fake clock's time."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test agent CA")])

    def sign(self, csr_pem: bytes, now: dt.datetime) -> bytes:
        csr = x509.load_pem_x509_csr(csr_pem)
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.name)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + WEEK)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += dt.timedelta(seconds=seconds)
        await asyncio.sleep(0)


def issued(ca: AgentCa, now: dt.datetime) -> ClientCertificate:
    key_pem, csr_pem = new_key_and_csr()
    return ClientCertificate(ca.sign(csr_pem, now), key_pem)


class Gateway:
    """Records which path each renewal took and when."""

    def __init__(self, ca: AgentCa, clock: Clock) -> None:
        self.ca, self.clock = ca, clock
        self.calls: list[tuple[str, dt.datetime]] = []
        self.mtls_failures: list[GatewayError] = []
        self.bearer_refusal: GatewayError | None = None

    async def mtls(self, csr_pem: bytes) -> gateway_pb2.AgentCertificate:
        self.calls.append(("mtls", self.clock.now))
        if self.mtls_failures:
            raise self.mtls_failures.pop(0)
        return gateway_pb2.AgentCertificate(certificate_pem=self.ca.sign(csr_pem, self.clock.now), mtls_address=":1")

    async def bearer(self, csr_pem: bytes) -> gateway_pb2.AgentCertificate:
        self.calls.append(("bearer", self.clock.now))
        if self.bearer_refusal is not None:
            raise self.bearer_refusal
        return gateway_pb2.AgentCertificate(certificate_pem=self.ca.sign(csr_pem, self.clock.now), mtls_address=":1")


def keeper_for(tmp_path: Path, clock: Clock, gateway: Gateway, current: ClientCertificate, stop: asyncio.Event):  # type: ignore[no-untyped-def]
    switched: list[ClientCertificate] = []

    async def on_renewed(renewed: ClientCertificate, answer: gateway_pb2.AgentCertificate) -> None:
        switched.append(renewed)
        stop.set()

    keeper = CertificateKeeper(
        str(tmp_path),
        current,
        renew_mtls=gateway.mtls,
        renew_bearer=gateway.bearer,
        on_renewed=on_renewed,
        now=lambda: clock.now,
        sleep=clock.sleep,
    )
    return keeper, switched


def test_identity_file_is_private_and_round_trips(tmp_path: Path) -> None:
    identity = issued(AgentCa(), START)
    save_identity(str(tmp_path), identity)
    assert stat.S_IMODE(os.stat(identity_path(str(tmp_path))).st_mode) == 0o600
    assert load_identity(str(tmp_path)) == identity
    assert load_identity(str(tmp_path / "none")) is None
    mismatched = ClientCertificate(identity.cert_pem, new_key_and_csr()[0])
    with pytest.raises(IdentityError):
        save_identity(str(tmp_path), mismatched)


async def test_renewal_happens_at_half_life_over_mtls_and_switches(tmp_path: Path) -> None:
    ca, clock, stop = AgentCa(), Clock(START), asyncio.Event()
    gateway = Gateway(ca, clock)
    current = issued(ca, START)
    keeper, switched = keeper_for(tmp_path, clock, gateway, current, stop)
    await asyncio.wait_for(keeper.run(stop), 10)

    [(path, when)] = gateway.calls
    assert path == "mtls"
    assert when == current.renew_at == START + WEEK / 2  # not before half-life, and not later
    assert all(s <= 600 for s in clock.slept)  # the clock is re-read at least every ten minutes
    [renewed] = switched
    assert renewed.certificate.not_valid_before_utc == when
    assert load_identity(str(tmp_path)) == renewed == keeper.current
    assert renewed.key_pem != current.key_pem  # a new key each renewal


async def test_a_failed_mtls_renewal_is_retried(tmp_path: Path) -> None:
    ca, clock, stop = AgentCa(), Clock(START + WEEK / 2), asyncio.Event()
    gateway = Gateway(ca, clock)
    gateway.mtls_failures.append(GatewayError("UNAVAILABLE", "gateway restarting"))
    keeper, switched = keeper_for(tmp_path, clock, gateway, issued(ca, START), stop)
    await asyncio.wait_for(keeper.run(stop), 10)
    assert [p for p, _ in gateway.calls] == ["mtls", "mtls"]
    assert len(switched) == 1


async def test_an_expired_certificate_is_renewed_with_the_bearer(tmp_path: Path) -> None:
    ca, clock, stop = AgentCa(), Clock(START + WEEK + dt.timedelta(days=3)), asyncio.Event()
    gateway = Gateway(ca, clock)
    keeper, switched = keeper_for(tmp_path, clock, gateway, issued(ca, START), stop)
    await asyncio.wait_for(keeper.run(stop), 10)
    assert [p for p, _ in gateway.calls] == ["bearer"]
    assert switched[0].not_after == clock.now + WEEK


async def test_a_refused_bearer_renewal_ends_the_keeper(tmp_path: Path) -> None:
    ca, clock, stop = AgentCa(), Clock(START + 2 * WEEK), asyncio.Event()
    gateway = Gateway(ca, clock)
    gateway.bearer_refusal = GatewayError("UNAUTHENTICATED", "credential revoked")
    keeper, switched = keeper_for(tmp_path, clock, gateway, issued(ca, START), stop)
    with pytest.raises(GatewayError):
        await asyncio.wait_for(keeper.run(stop), 10)
    assert not switched
