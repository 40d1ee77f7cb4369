"""What every subcommand gets: parsed arguments, gRPC stubs of the services, and the output mode."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from strongroom.alerts.v1 import alerts_pb2_grpc
from strongroom.audit.v1 import audit_pb2_grpc
from strongroom.auth.v1 import auth_pb2_grpc
from strongroom.billing.v1 import billing_pb2_grpc
from strongroom.catalog.v1 import catalog_pb2_grpc
from strongroom.gateway.v1 import verify_pb2_grpc
from strongroom.restore.v1 import restore_pb2_grpc
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from strongroom_cli.config import missing_address


class UsageError(Exception):
    """The command line is valid syntax but cannot be carried out as given (exit code 2)."""


@dataclass
class Context:
    """Per-invocation state; channels are opened on first use and closed by :meth:`close`."""

    args: argparse.Namespace
    addresses: Mapping[str, str]
    account_id: str
    json: bool
    timeout: float
    token: str = ""
    ca_file: str = ""
    plaintext: bool = False
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def _channel(self, service: str) -> grpc.aio.Channel:
        if service not in self._channels:
            address = self.addresses.get(service)
            if not address:
                raise missing_address(service)
            self._channels[service] = self._open(address)
        return self._channels[service]

    def _open(self, address: str) -> grpc.aio.Channel:
        """TLS verified by ``ca_file`` (or the system's CAs); plaintext only when asked for."""
        if self.plaintext:
            return grpc.aio.insecure_channel(address)
        roots = Path(self.ca_file).read_bytes() if self.ca_file else None
        return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots))

    def scheduler(self) -> scheduler_pb2_grpc.SchedulerServiceAsyncStub:
        return scheduler_pb2_grpc.SchedulerServiceStub(self._channel("scheduler"))

    def catalog(self) -> catalog_pb2_grpc.CatalogServiceAsyncStub:
        return catalog_pb2_grpc.CatalogServiceStub(self._channel("catalog"))

    def restore(self) -> restore_pb2_grpc.RestoreServiceAsyncStub:
        return restore_pb2_grpc.RestoreServiceStub(self._channel("restore"))

    def billing(self) -> billing_pb2_grpc.BillingServiceAsyncStub:
        return billing_pb2_grpc.BillingServiceStub(self._channel("billing"))

    def tokens(self) -> auth_pb2_grpc.TokenServiceAsyncStub:
        """API tokens are served by the scheduler."""
        return auth_pb2_grpc.TokenServiceStub(self._channel("scheduler"))

    def audit(self) -> audit_pb2_grpc.AuditServiceAsyncStub:
        """The audit trail is served by the scheduler."""
        return audit_pb2_grpc.AuditServiceStub(self._channel("scheduler"))

    def alerts(self) -> alerts_pb2_grpc.AlertServiceAsyncStub:
        """Alert subscriptions and in-app messages are served by the scheduler (ADR 0037)."""
        return alerts_pb2_grpc.AlertServiceStub(self._channel("scheduler"))

    def verify(self) -> verify_pb2_grpc.VerifyServiceAsyncStub:
        """Verifications run in the gateway, which holds the packs and the keys (ADR 0033)."""
        return verify_pb2_grpc.VerifyServiceStub(self._channel("gateway"))

    async def require_instance(self, instance_id: str) -> None:
        """Raise the scheduler's NOT_FOUND when ``instance_id`` names no instance of the account.

        Lists served by other services answer an unknown instance with an empty list (they know
        instances only through their events); a command that got one asks the scheduler, so that a
        mistyped id exits non-zero instead of looking like an instance with nothing yet.
        """
        await self.scheduler().GetInstance(scheduler_pb2.GetInstanceRequest(instance_id=instance_id), **self.call)

    @property
    def call(self) -> dict[str, Any]:
        """Keyword arguments of every RPC: the deadline and the credential."""
        if not self.token:
            return {"timeout": self.timeout}
        return {"timeout": self.timeout, "metadata": (("authorization", f"Bearer {self.token}"),)}

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
