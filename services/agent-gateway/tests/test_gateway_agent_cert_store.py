"""The agent-certificate part of the store (ADR 0028), for the fake and PostgreSQL alike."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from strongroom_gateway.agent_cert_store import AgentCertificate
from strongroom_gateway.migrations import SPEC
from strongroom_gateway.ports import Account, GatewayStore
from strongroom_gateway.repository import PgGatewayStore
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform.clock import utc

NOW = utc(2026, 12, 1, 12, 0)
DAY = dt.timedelta(days=1)


@pytest.fixture(params=["memory", pytest.param("pg", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[GatewayStore]:
    if request.param == "memory":
        yield InMemoryGatewayStore()
        return
    pool = await request.getfixturevalue("pg_logins").pool(SPEC)
    try:
        yield PgGatewayStore(pool)
    finally:
        await pool.close()


def cert(serial: str, instance_id: str, *, not_after: dt.datetime = NOW + 7 * DAY) -> AgentCertificate:
    return AgentCertificate(serial, instance_id, "acct-a", NOW, not_after)


async def test_recorded_denied_and_instance_revocation(store: GatewayStore) -> None:
    async with store.transaction() as tx:
        await tx.ensure_account(Account("acct-a", b"k" * 32, 1))
        for instance_id in ("i-1", "i-2"):
            await tx.activate_instance(instance_id, "acct-a", f"tok-{instance_id}", NOW + DAY)
            await tx.enroll_instance(instance_id, "hash", "host", NOW)
        await tx.record_certificate(cert("a1", "i-1"))
        await tx.record_certificate(cert("a2", "i-1"))
        await tx.record_certificate(cert("old", "i-1", not_after=NOW - DAY))
        await tx.record_certificate(cert("b1", "i-2"))
    async with store.transaction() as tx:
        status = await tx.certificate_status("a1")
        assert status is not None and status.certificate == cert("a1", "i-1") and not status.instance_revoked
        assert await tx.certificate_status("nope") is None
        # One serial, then the rest; the expired one is not touched, nor the other instance's.
        assert await tx.revoke_certificates("i-1", now=NOW, reason="leak", serial="a2") == ["a2"]
        assert await tx.revoke_certificates("i-1", now=NOW, reason="cancel") == ["a1"]
        assert await tx.revoke_certificates("i-1", now=NOW, reason="again") == []
    async with store.transaction() as tx:
        denied = await tx.certificate_status("a2")
        assert denied is not None and denied.certificate.revoked_at == NOW
        assert denied.certificate.revoke_reason == "leak"
        other = await tx.certificate_status("b1")
        assert other is not None and other.certificate.revoked_at is None
        await tx.clear_credential("i-2")
        instance = await tx.get_instance("i-2")
        assert instance is not None and instance.credential_sha256 is None
        await tx.revoke_instance("i-2")
    async with store.transaction() as tx:
        revoked = await tx.certificate_status("b1")
        assert revoked is not None and revoked.instance_revoked
