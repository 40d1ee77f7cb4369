"""Persistence of agent certificates: every serial issued, and the deny-list (ADR 0028).

A table of its own (``agent_certificates``, migration 5): each certificate the gateway issues is
recorded with its instance, account and expiry; revoking sets ``revoked_at``. The interceptor
admits a certificate only when its serial is recorded, not revoked, and its instance not revoked,
so the deny-list is checked on every call (one indexed read, as the bearer check before it).

The methods are part of the gateway's unit of work (``ports.GatewayTx``), so a revocation commits
with the event that caused it. The two adapters are mixins of ``PgGatewayTx`` and
``InMemoryGatewayTx``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Protocol

import asyncpg

if TYPE_CHECKING:  # ports imports this module
    from strongroom_gateway.ports import Instance

AGENT_CERTIFICATES_DDL = """
CREATE TABLE agent_certificates (
    -- Lower-case hex of the certificate's serial number (up to 159 bits: not a bigint).
    serial text PRIMARY KEY,
    instance_id text NOT NULL REFERENCES instances (instance_id),
    account_id text NOT NULL,
    issued_at timestamptz NOT NULL,
    not_after timestamptz NOT NULL,
    -- The deny-list: set on cancel (instance-deactivated) and by an admin revocation.
    revoked_at timestamptz,
    revoke_reason text NOT NULL DEFAULT ''
);
CREATE INDEX agent_certificates_by_instance ON agent_certificates (instance_id, not_after);
"""


@dataclasses.dataclass(frozen=True, slots=True)
class AgentCertificate:
    serial: str
    instance_id: str
    account_id: str
    issued_at: dt.datetime
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None
    revoke_reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateStatus:
    """What the interceptor needs to admit a certificate: its record and its instance's."""

    certificate: AgentCertificate
    instance_revoked: bool


class CertificateTx(Protocol):
    async def record_certificate(self, certificate: AgentCertificate) -> None: ...

    async def certificate_status(self, serial: str) -> CertificateStatus | None:
        """The certificate with this serial and whether its instance is revoked; None if never issued."""
        ...

    async def revoke_certificates(
        self, instance_id: str, *, now: dt.datetime, reason: str, serial: str | None = None
    ) -> list[str]:
        """Deny the instance's unexpired, unrevoked certificates (only ``serial`` when given); their serials."""
        ...

    async def clear_credential(self, instance_id: str) -> None:
        """Drop the instance's bearer credential (no renewal until it enrolls again)."""
        ...


class PgCertificateTx:
    """The PostgreSQL side (``self._conn`` is the transaction's connection, from ``PgTransaction``)."""

    _conn: asyncpg.Connection

    async def record_certificate(self, certificate: AgentCertificate) -> None:
        await self._conn.execute(
            "INSERT INTO agent_certificates (serial, instance_id, account_id, issued_at, not_after)"
            " VALUES ($1, $2, $3, $4, $5)",
            certificate.serial,
            certificate.instance_id,
            certificate.account_id,
            certificate.issued_at,
            certificate.not_after,
        )

    async def certificate_status(self, serial: str) -> CertificateStatus | None:
        row = await self._conn.fetchrow(
            "SELECT c.*, i.revoked AS instance_revoked FROM agent_certificates c"
            " JOIN instances i ON i.instance_id = c.instance_id WHERE c.serial = $1",
            serial,
        )
        if row is None:
            return None
        certificate = AgentCertificate(
            serial=row["serial"],
            instance_id=row["instance_id"],
            account_id=row["account_id"],
            issued_at=row["issued_at"],
            not_after=row["not_after"],
            revoked_at=row["revoked_at"],
            revoke_reason=row["revoke_reason"],
        )
        return CertificateStatus(certificate, row["instance_revoked"])

    async def revoke_certificates(
        self, instance_id: str, *, now: dt.datetime, reason: str, serial: str | None = None
    ) -> list[str]:
        rows = await self._conn.fetch(
            "UPDATE agent_certificates SET revoked_at = $2, revoke_reason = $3"
            " WHERE instance_id = $1 AND revoked_at IS NULL AND not_after > $2"
            " AND ($4::text IS NULL OR serial = $4) RETURNING serial",
            instance_id,
            now,
            reason,
            serial,
        )
        return sorted(row["serial"] for row in rows)

    async def clear_credential(self, instance_id: str) -> None:
        await self._conn.execute("UPDATE instances SET credential_sha256 = NULL WHERE instance_id = $1", instance_id)


class _MemoryState(Protocol):
    instances: dict[str, Instance]
    certificates: dict[str, AgentCertificate]


class MemoryCertificateTx:
    """The in-memory side (``self._s`` is the fake store's state)."""

    _s: _MemoryState

    async def record_certificate(self, certificate: AgentCertificate) -> None:
        if certificate.instance_id not in self._s.instances or certificate.serial in self._s.certificates:
            raise ValueError(f"cannot record certificate {certificate.serial}")  # foreign / primary key
        self._s.certificates[certificate.serial] = certificate

    async def certificate_status(self, serial: str) -> CertificateStatus | None:
        certificate = self._s.certificates.get(serial)
        if certificate is None:
            return None
        return CertificateStatus(certificate, self._s.instances[certificate.instance_id].revoked)

    async def revoke_certificates(
        self, instance_id: str, *, now: dt.datetime, reason: str, serial: str | None = None
    ) -> list[str]:
        revoked = []
        for current in list(self._s.certificates.values()):
            if current.instance_id != instance_id or current.revoked_at is not None or current.not_after <= now:
                continue
            if serial is not None and current.serial != serial:
                continue
            self._s.certificates[current.serial] = dataclasses.replace(current, revoked_at=now, revoke_reason=reason)
            revoked.append(current.serial)
        return sorted(revoked)

    async def clear_credential(self, instance_id: str) -> None:
        current = self._s.instances.get(instance_id)
        if current is not None:
            self._s.instances[instance_id] = dataclasses.replace(current, credential_sha256=None)
