"""Transport security: TLS settings, gRPC credentials that reload, client TLS for the backends, pinning.

Decisions and reasons: ``docs/adr/0023-tls-everywhere.md``. In short:

- A process's gRPC identity is :class:`TlsSettings` (``STRONGROOM_TLS_CERT`` / ``_KEY`` / ``_CA`` /
  ``_CLIENT_CA``). :func:`server_credentials` serves the certificate files and re-reads them when
  they change (checked before every new handshake), so a renewed certificate is used without a
  restart. A client CA makes the listener require and verify client certificates (mutual TLS).
- :func:`listener_credentials` is the plaintext policy: a listener without TLS settings is refused
  (:class:`PlaintextRefused`) unless ``STRONGROOM_INSECURE_PLAINTEXT=1`` was set explicitly.
- PostgreSQL, Kafka and S3 are reached with :class:`BackendTls` (``STRONGROOM_PG_TLS*``,
  ``STRONGROOM_KAFKA_TLS*``, ``STRONGROOM_S3_TLS_CA``): an :class:`ssl.SSLContext` that verifies
  the chain and the host name (libpq's ``sslmode=verify-full``).
- Pinning (the enrollment token's CA pins): :func:`pinned_roots` keeps the certificates of a CA
  bundle whose SPKI hash is pinned; the result is the channel's only trust anchor, so gRPC's own
  chain and host-name verification enforce the pin.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from strongroom_telemetry.grpc_tracing import client_interceptors

from strongroom_platform.certs import load_certificate, public_key_sha256, spki_sha256
from strongroom_platform.settings import (
    INSECURE_PLAINTEXT_ENV,
    BackendTls,
    PlaintextRefused,
    SettingsError,
    TlsSettings,
)

__all__ = [
    "INSECURE_PLAINTEXT_ENV",
    "BackendTls",
    "CertificateFiles",
    "PinMismatch",
    "PlaintextRefused",
    "ReloadingServerCertificates",
    "TlsSettings",
    "channel_credentials",
    "backend_ssl_context",
    "bearer_channel",
    "client_ssl_context",
    "fetch_peer_certificate",
    "listener_credentials",
    "pinned_roots",
    "secure_channel",
    "server_credentials",
]

log = logging.getLogger(__name__)

# The key types a served certificate may have (cert-manager issues RSA, ECDSA or Ed25519).
_LEAF_KEY_TYPES = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)


class PinMismatch(ValueError):
    """No certificate of a trust bundle matches the pinned SPKI hashes."""


# -- server side ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """What one load of a listener's files produced."""

    cert_chain_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None
    certificate: x509.Certificate


def _load_files(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> CertificateFiles:
    cert_pem, key_pem = cert_file.read_bytes(), key_file.read_bytes()
    client_ca = client_ca_file.read_bytes() if client_ca_file is not None else None
    cert = load_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    # Between the writes of a renewed pair the files can disagree; such a pair is never served.
    if not isinstance(key, _LEAF_KEY_TYPES) or spki_sha256(cert) != public_key_sha256(key.public_key()):
        raise ValueError(f"the key in {key_file} does not belong to the certificate in {cert_file}")
    if client_ca is not None and not x509.load_pem_x509_certificates(client_ca):
        raise ValueError(f"{client_ca_file} holds no certificate")
    return CertificateFiles(cert_pem, key_pem, client_ca, cert)


def _signature(paths: Collection[Path]) -> tuple[tuple[int, int, int, int], ...]:
    # stat() follows symlinks: a Kubernetes secret volume swaps its ..data link, which changes the
    # inode seen through tls.crt; an in-place rewrite changes mtime or size.
    result = []
    for path in paths:
        st = os.stat(path)
        result.append((st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size))
    return tuple(result)


class ReloadingServerCertificates:
    """A listener's certificate, key and client CA, re-read when the files change.

    :meth:`fetch` is gRPC's certificate-configuration fetcher: called before every new
    handshake, it stats the files (cheap) and, when they changed, loads them; it returns the new
    configuration, or None to keep the current one (unchanged files, or files that do not load:
    half-written, a key that does not match; logged once per change and retried on the next
    handshake). The constructor loads the files and raises when they are unusable.
    """

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> None:
        self._paths = [p for p in (cert_file, key_file, client_ca_file) if p is not None]
        self._cert_file, self._key_file, self._client_ca_file = cert_file, key_file, client_ca_file
        self._lock = threading.Lock()
        self._seen = _signature(self._paths)
        self._current = _load_files(cert_file, key_file, client_ca_file)
        self._failed: tuple[tuple[int, int, int, int], ...] | None = None

    @property
    def current(self) -> CertificateFiles:
        """The files being served."""
        return self._current

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        """The gRPC configuration of :attr:`current`."""
        files = self._current
        return grpc.ssl_server_certificate_configuration(
            [(files.key_pem, files.cert_chain_pem)], root_certificates=files.client_ca_pem
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed and load; None to keep the current one."""
        try:
            with self._lock:
                signature = _signature(self._paths)
                if signature == self._seen or signature == self._failed:
                    return None
                try:
                    loaded = _load_files(self._cert_file, self._key_file, self._client_ca_file)
                except (OSError, ValueError) as exc:
                    self._failed = signature
                    log.warning("keeping the current certificate of %s: %s", self._cert_file, exc)
                    return None
                self._seen, self._current, self._failed = signature, loaded, None
                log.info(
                    "loaded certificate %s (serial %x, valid until %s)",
                    self._cert_file,
                    loaded.certificate.serial_number,
                    loaded.certificate.not_valid_after_utc.isoformat(),
                )
                return self.configuration()
        except Exception:  # an exception must never reach gRPC's C core from here
            log.exception("certificate reload check of %s failed", self._cert_file)
            return None


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """Server credentials on ``tls``'s files, reloaded when they change; mutual TLS with a client CA.

    Raises SettingsError without a certificate and key, OSError/ValueError when they cannot be used.
    """
    if tls.cert_file is None or tls.key_file is None:
        raise SettingsError("a TLS listener needs STRONGROOM_TLS_CERT and STRONGROOM_TLS_KEY")
    certificates = ReloadingServerCertificates(tls.cert_file, tls.key_file, tls.client_ca_file)
    return grpc.dynamic_ssl_server_credentials(
        certificates.configuration(),
        # gRPC documents None as "keep the current configuration"; its type stub omits it.
        certificates.fetch,  # type: ignore[arg-type]
        require_client_authentication=tls.require_client_cert,
    )


def listener_credentials(
    tls: TlsSettings | None, *, insecure_plaintext: bool, listener: str
) -> grpc.ServerCredentials | None:
    """The plaintext policy for one listener (``listener`` names it in messages and the log).

    With TLS settings: :func:`server_credentials`. Without: None (plaintext) only when
    ``insecure_plaintext`` (``STRONGROOM_INSECURE_PLAINTEXT=1``) is set, with a warning;
    otherwise :class:`PlaintextRefused`, which ends the process before it listens.
    """
    if tls is not None and tls.has_identity:
        return server_credentials(tls)
    if insecure_plaintext:
        log.warning("%s listens WITHOUT TLS (%s=1)", listener, INSECURE_PLAINTEXT_ENV)
        return None
    raise PlaintextRefused(
        f"{listener}: no TLS certificate (set STRONGROOM_TLS_CERT and STRONGROOM_TLS_KEY); "
        f"plaintext needs {INSECURE_PLAINTEXT_ENV}=1"
    )


# -- client side (gRPC) --------------------------------------------------------------------------


def channel_credentials(
    *, ca_pem: bytes | None = None, cert_pem: bytes | None = None, key_pem: bytes | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials trusting ``ca_pem`` (None: the system roots), presenting
    ``cert_pem``/``key_pem`` as client certificate when given."""
    if (cert_pem is None) != (key_pem is None):
        raise ValueError("a client certificate needs its key and a key its certificate")
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)


def _tls_channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    ca = tls.ca_file.read_bytes() if tls.ca_file is not None else None
    cert = tls.cert_file.read_bytes() if tls.cert_file is not None else None
    key = tls.key_file.read_bytes() if tls.key_file is not None else None
    return channel_credentials(ca_pem=ca, cert_pem=cert, key_pem=key)


def secure_channel(
    target: str,
    tls: TlsSettings | None,
    *,
    insecure_plaintext: bool,
    options: list[tuple[str, object]] | None = None,
) -> grpc.aio.Channel:
    """A channel to peer ``target`` under the plaintext policy (see :func:`listener_credentials`).

    With TLS settings: trusts ``tls.ca_file`` and presents ``tls.cert_file`` as the client
    certificate (service-to-service mutual TLS). Files are read now: a channel keeps the client
    certificate it was built with. Calls carry the caller's trace context (``traceparent``).
    """
    if tls is not None:
        return grpc.aio.secure_channel(
            target, _tls_channel_credentials(tls), options=options, interceptors=client_interceptors()
        )
    if insecure_plaintext:
        return grpc.aio.insecure_channel(target, options=options, interceptors=client_interceptors())
    raise PlaintextRefused(f"channel to {target}: no TLS settings; plaintext needs {INSECURE_PLAINTEXT_ENV}=1")


def bearer_channel(address: str, ca_pem: bytes, token: str) -> grpc.aio.Channel:
    """A TLS channel trusting ``ca_pem`` that sends ``token`` as the bearer of every call (an operator's)."""
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca_pem), grpc.access_token_call_credentials(token)
    )
    return grpc.aio.secure_channel(address, credentials, interceptors=client_interceptors())


def pinned_roots(bundle_pem: bytes, pins: Collection[str]) -> bytes:
    """The PEM of the certificates in ``bundle_pem`` whose :func:`spki_sha256` is in ``pins``.

    The result is meant as a channel's *only* root certificates: gRPC then verifies the chain and
    the host name against the pinned CAs alone, so a server certificate from any other CA (even a
    publicly trusted one) fails the handshake. Raises PinMismatch when no certificate matches.
    """
    wanted = set(pins)
    kept = [
        cert.public_bytes(serialization.Encoding.PEM)
        for cert in x509.load_pem_x509_certificates(bundle_pem)
        if spki_sha256(cert) in wanted
    ]
    if not kept:
        raise PinMismatch("no certificate of the trust bundle matches the pinned SPKI hashes")
    return b"".join(kept)


def fetch_peer_certificate(
    host: str,
    port: int,
    *,
    ca_pem: bytes,
    server_hostname: str | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    timeout: float = 5.0,
) -> x509.Certificate:
    """The certificate a TLS server at ``host:port`` presents, verified against ``ca_pem``.

    A blocking ``ssl`` handshake (diagnostics, tests, a pin check before a channel is built),
    offering ALPN ``h2`` as gRPC servers require. Raises ssl.SSLError when verification fails.
    """
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    context.set_alpn_protocols(["h2"])
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(cert_file, key_file)
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname or host) as tls_socket,
    ):
        der = tls_socket.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError("the server presented no certificate")
    return x509.load_der_x509_certificate(der)


# -- client side (backends) ----------------------------------------------------------------------


def client_ssl_context(
    *, ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client context that verifies the chain (``ca_file``, or the system roots) and the host name,
    TLS 1.2 at least, presenting ``cert_file``/``key_file`` when given (libpq's verify-full)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs its key and a key its certificate")
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def backend_ssl_context(backend: BackendTls) -> ssl.SSLContext | None:
    """The verifying client context of ``backend``, or None when its TLS is off."""
    if not backend.enabled:
        return None
    return client_ssl_context(ca_file=backend.ca_file, cert_file=backend.cert_file, key_file=backend.key_file)
