"""A local PKI and operator credentials for tests that run real services (ADRs 0023, 0024).

``LocalPki`` issues every service its certificate from one test CA (as the standalone runner does),
gives the TLS settings and environment a service needs, and builds the channels tests call with:
operators over server TLS with a bearer token, fakes of peer services on mutual TLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from strongroom_platform.certs import CA_CERT_FILE, ensure_local_pki, pair_paths, service_tls_env, spki_sha256
from strongroom_platform.settings import TlsSettings
from strongroom_platform.tls import bearer_channel, server_credentials

SERVICES = ("gateway", "catalog", "scheduler", "billing", "restore")


@dataclass(frozen=True)
class LocalPki:
    directory: Path

    @classmethod
    def create(cls, directory: Path) -> LocalPki:
        ensure_local_pki(directory, SERVICES)
        return cls(directory)

    @property
    def ca_file(self) -> Path:
        return self.directory / CA_CERT_FILE

    @property
    def ca_pin(self) -> str:
        return spki_sha256(self.ca_file.read_bytes())

    def tls(self, service: str) -> TlsSettings:
        """The TLS settings of ``service``: its certificate, trusting and requiring the test CA."""
        cert, key = pair_paths(self.directory, service)
        return TlsSettings(cert_file=cert, key_file=key, ca_file=self.ca_file, client_ca_file=self.ca_file)

    def env(self, service: str, *, internal_listen: str = "127.0.0.1:0") -> dict[str, str]:
        """The environment of a ``service`` process: TLS and an internal listener."""
        return service_tls_env(self.directory, service, internal_listen=internal_listen)

    def operator_channel(self, address: str, token: str) -> grpc.aio.Channel:
        """A TLS channel to a public listener that sends ``token`` as the bearer of every call."""
        return bearer_channel(address, self.ca_file.read_bytes(), token)

    def service_channel(self, address: str, service: str) -> grpc.aio.Channel:
        """A mutual-TLS channel to an internal listener, as ``service``."""
        cert, key = pair_paths(self.directory, service)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=key.read_bytes(),
            certificate_chain=cert.read_bytes(),
        )
        return grpc.aio.secure_channel(address, credentials)

    def peer_credentials(self, service: str) -> grpc.ServerCredentials:
        """Server credentials for a fake of ``service``'s internal listener (mutual TLS)."""
        return server_credentials(self.tls(service))
