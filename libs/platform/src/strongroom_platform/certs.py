"""The built-in certificate authority: what standalone mode and the tests use instead of cert-manager.

A CA is an EC P-256 key and a self-signed certificate. It issues two kinds of leaf:

- **service certificates** (:meth:`CertificateAuthority.issue_service`): the identity of one
  Strongroom process. Subject CN is the name; SANs are the DNS names and IP addresses it is
  reached at plus the URI ``spiffe://strongroom/service/<name>`` (:func:`service_uri`), the
  identity the later authorization layer reads from a verified peer. Extended key usage is
  serverAuth *and* clientAuth, so the same pair serves the process's listeners and identifies it
  when it calls a peer over mutual TLS.
- **client certificates** (:meth:`CertificateAuthority.issue_client`): clientAuth only, no DNS
  names (an operator, a test client, later an agent).

Files (:func:`write_ca`, :func:`write_pair`, :func:`load_ca`) in one directory: ``ca.pem`` and
``ca-key.pem`` for the CA, ``<name>.pem`` and ``<name>-key.pem`` per leaf. Private keys are
written 0600, atomically (a reloading server never reads half a file). Certificates are PEM,
keys unencrypted PKCS#8 PEM.

:func:`spki_sha256` is the pin format: base64 of the SHA-256 of the DER SubjectPublicKeyInfo
(the value HPKP and ``curl --pinnedpubkey sha256//...`` use).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from strongroom_platform.clock import Clock, SystemClock

__all__ = [
    "AGENT_CA_CERT_FILE",
    "AGENT_CA_KEY_FILE",
    "AGENT_URI_PREFIX",
    "CA_CERT_FILE",
    "service_tls_env",
    "CA_KEY_FILE",
    "SERVICE_URI_PREFIX",
    "CertificateAuthority",
    "CsrRefused",
    "IssuedPair",
    "agent_identity",
    "agent_uri",
    "ensure_agent_ca",
    "ensure_local_pki",
    "load_ca",
    "load_ca_files",
    "load_certificate",
    "pair_paths",
    "public_key_sha256",
    "service_uri",
    "spki_sha256",
    "write_ca",
    "write_pair",
    "write_private",
    "write_public",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
SERVICE_URI_PREFIX = "spiffe://strongroom/service/"
AGENT_URI_PREFIX = "spiffe://strongroom/agent/"
# The agent CA (ADR 0028) lives next to the service CA in a local PKI, under its own names.
AGENT_CA_CERT_FILE = "agent-ca.pem"
AGENT_CA_KEY_FILE = "agent-ca-key.pem"

# Backdating absorbs small clock differences between the issuer and the verifier.
_BACKDATE = dt.timedelta(minutes=5)
CA_VALID_DAYS = 3650
SERVICE_VALID_DAYS = 90
CLIENT_VALID_DAYS = 7


def service_uri(name: str) -> str:
    """The URI SAN naming service ``name`` (``spiffe://strongroom/service/<name>``)."""
    _check_name(name)
    return SERVICE_URI_PREFIX + name


def agent_uri(account_id: str, instance_id: str) -> str:
    """The URI SAN naming one agent: ``spiffe://strongroom/agent/<account>/<instance>``."""
    for part in (account_id, instance_id):
        _check_name(part)
    return f"{AGENT_URI_PREFIX}{account_id}/{instance_id}"


def agent_identity(cert: x509.Certificate) -> tuple[str, str] | None:
    """``(account_id, instance_id)`` of the certificate's agent URI SAN, or None when it has none."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if not uri.startswith(AGENT_URI_PREFIX):
            continue
        account_id, slash, instance_id = uri[len(AGENT_URI_PREFIX) :].partition("/")
        try:
            if slash and agent_uri(account_id, instance_id) == uri:
                return account_id, instance_id
        except ValueError:
            return None
    return None


class CsrRefused(ValueError):
    """A certificate signing request this CA does not sign (bad signature, wrong key type)."""


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"invalid certificate name {name!r}: use letters, digits, '-', '_' and '.'")


def spki_sha256(cert: x509.Certificate | bytes) -> str:
    """Base64 SHA-256 of the certificate's DER SubjectPublicKeyInfo (``cert`` object, PEM or DER)."""
    if isinstance(cert, bytes):
        cert = load_certificate(cert)
    return public_key_sha256(cert.public_key())


def public_key_sha256(public_key: CertificatePublicKeyTypes) -> str:
    """Base64 SHA-256 of a public key's DER SubjectPublicKeyInfo (the pin of a key)."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def load_certificate(data: bytes) -> x509.Certificate:
    """The first certificate of PEM ``data`` (or DER ``data``); ValueError when there is none."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    encoding, key_format = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, key_format, serialization.NoEncryption())


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Digital signatures (ECDSA handshakes), plus certificate and CRL signing for a CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True, slots=True)
class IssuedPair:
    """A leaf certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA certificate with its key; issues leaf certificates signed with ECDSA-SHA256."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(
        cls, common_name: str = "Strongroom CA", *, valid_days: int = CA_VALID_DAYS, clock: Clock | None = None
    ) -> CertificateAuthority:
        """A new self-signed CA (path length 0: it signs leaves only)."""
        now = (clock or SystemClock()).now()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)

    def issue_service(
        self,
        name: str,
        *,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        valid_days: int = SERVICE_VALID_DAYS,
        clock: Clock | None = None,
    ) -> IssuedPair:
        """A server+client certificate for service ``name``.

        SANs: ``dns`` names, ``ips`` addresses and the URI :func:`service_uri` ``(name)``.
        ``name`` itself is also a DNS SAN when no ``dns`` is given (a name like ``catalog``
        resolves inside a cluster).
        """
        dns_names = list(dns) or [name]
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        sans.append(x509.UniformResourceIdentifier(service_uri(name)))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        return self._issue(name, sans, usages, valid_days, clock)

    def issue_client(
        self,
        name: str,
        *,
        uri: str | None = None,
        valid_days: int = CLIENT_VALID_DAYS,
        clock: Clock | None = None,
    ) -> IssuedPair:
        """A client-only certificate with subject CN ``name`` and, when given, the URI SAN ``uri``."""
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)] if uri else []
        return self._issue(name, sans, [ExtendedKeyUsageOID.CLIENT_AUTH], valid_days, clock)

    def sign_agent_csr(
        self,
        csr_pem: bytes,
        *,
        account_id: str,
        instance_id: str,
        validity: dt.timedelta = dt.timedelta(days=CLIENT_VALID_DAYS),
        clock: Clock | None = None,
    ) -> x509.Certificate:
        """An agent's client certificate for the key of ``csr_pem`` (ADR 0028).

        Only the CSR's public key is used: it must be EC P-256 and the CSR must be signed by it
        (proof of possession). Subject, SANs and usages are this CA's choice, never the CSR's:
        CN ``strongroom-agent``, URI SAN :func:`agent_uri`, clientAuth only. Raises CsrRefused.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CsrRefused(f"not a PEM certificate signing request: {exc}") from None
        if not csr.is_signature_valid:
            raise CsrRefused("the certificate signing request's signature does not verify")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
            raise CsrRefused("agent keys must be EC P-256")
        if validity <= dt.timedelta(0):
            raise ValueError("validity must be positive")
        now = (clock or SystemClock()).now()
        uri = agent_uri(account_id, instance_id)
        not_after = min(now + validity, self.certificate.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strongroom-agent")]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def _issue(
        self,
        name: str,
        sans: list[x509.GeneralName],
        usages: list[x509.ObjectIdentifier],
        valid_days: int,
        clock: Clock | None,
    ) -> IssuedPair:
        _check_name(name)
        if valid_days < 1:
            raise ValueError("valid_days must be at least 1")
        now = (clock or SystemClock()).now()
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(min(now + dt.timedelta(days=valid_days), self.certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return IssuedPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".{secrets.token_hex(4)}")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Write a private key (mode 0600), atomically."""
    _write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Write a certificate (mode 0644), atomically."""
    _write_atomic(path, data, 0o644)


def pair_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """``(<dir>/<name>.pem, <dir>/<name>-key.pem)``."""
    _check_name(name)
    return directory / f"{name}.pem", directory / f"{name}-key.pem"


def write_pair(directory: Path, name: str, pair: IssuedPair) -> tuple[Path, Path]:
    """Write ``pair`` as ``<name>.pem`` and ``<name>-key.pem`` (0600); key first, so a reader
    polling the certificate's change never sees a new certificate with the old key for long."""
    cert_path, key_path = pair_paths(directory, name)
    write_private(key_path, pair.key_pem)
    write_public(cert_path, pair.cert_pem)
    return cert_path, key_path


def write_ca(directory: Path, ca: CertificateAuthority) -> Path:
    """Write ``ca.pem`` and ``ca-key.pem`` (0600) into ``directory``; return the certificate's path."""
    write_private(directory / CA_KEY_FILE, ca.key_pem)
    write_public(directory / CA_CERT_FILE, ca.cert_pem)
    return directory / CA_CERT_FILE


def load_ca(directory: Path) -> CertificateAuthority:
    """The CA stored in ``directory`` by :func:`write_ca`. Raises FileNotFoundError or ValueError."""
    return load_ca_files(directory / CA_CERT_FILE, directory / CA_KEY_FILE)


def load_ca_files(cert_file: Path, key_file: Path) -> CertificateAuthority:
    """A CA from its certificate and EC key files (a mounted Secret). Raises OSError or ValueError."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file} is not an EC private key")
    if public_key_sha256(key.public_key()) != spki_sha256(cert):
        raise ValueError(f"{key_file} does not belong to {cert_file}")
    return CertificateAuthority(cert, key)


def ensure_agent_ca(directory: Path, *, clock: Clock | None = None) -> tuple[Path, Path]:
    """The agent CA of a local PKI (``agent-ca.pem``, ``agent-ca-key.pem``), created when missing.

    A CA of its own, not the service CA: a certificate it issues names an agent and can never pass
    an internal listener's service check, and its key can live only in the gateway.
    """
    cert_file, key_file = directory / AGENT_CA_CERT_FILE, directory / AGENT_CA_KEY_FILE
    try:
        load_ca_files(cert_file, key_file)
    except FileNotFoundError:
        ca = CertificateAuthority.create("Strongroom agent CA", clock=clock)
        write_private(key_file, ca.key_pem)
        write_public(cert_file, ca.cert_pem)
    return cert_file, key_file


def ensure_local_pki(
    directory: Path, names: Iterable[str], *, ips: Iterable[str] = ("127.0.0.1",), clock: Clock | None = None
) -> dict[str, tuple[Path, Path]]:
    """The files a one-machine deployment (standalone, end-to-end tests) needs, created as needed.

    Loads the CA of ``directory`` or creates one; for each of ``names`` keeps ``<name>.pem`` while
    it was issued by that CA and has more than a third of its life left, else issues a new service
    certificate (DNS ``localhost`` and ``<name>``, ``ips``). Returns ``{name: (cert, key)}``; the CA
    bundle is ``directory / CA_CERT_FILE``.
    """
    now = (clock or SystemClock()).now()
    try:
        ca = load_ca(directory)
    except FileNotFoundError:
        ca = CertificateAuthority.create(clock=clock)
        write_ca(directory, ca)
    ip_list = list(ips)
    result: dict[str, tuple[Path, Path]] = {}
    for name in names:
        cert_path, key_path = pair_paths(directory, name)
        if not _still_good(cert_path, key_path, ca, now):
            pair = ca.issue_service(name, dns=["localhost", name], ips=ip_list, clock=clock)
            write_pair(directory, name, pair)
        result[name] = (cert_path, key_path)
    return result


def _still_good(cert_path: Path, key_path: Path, ca: CertificateAuthority, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca.certificate)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey) or public_key_sha256(key.public_key()) != spki_sha256(cert):
        return False
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now > life / 3


def service_tls_env(directory: Path, service: str, *, internal_listen: str | None = None) -> dict[str, str]:
    """The environment of ``service`` on the local PKI of ``directory`` (``ensure_local_pki``).

    The service presents ``<service>.pem`` on its listeners and to its peers, trusts the CA, and
    its internal listener (``internal_listen``, default any free port) accepts only certificates of
    the same CA (mutual TLS, ADR 0024).
    """
    cert, key = pair_paths(directory, service)
    internal = "STRONGROOM_GATEWAY_INTERNAL_LISTEN" if service == "gateway" else "STRONGROOM_INTERNAL_LISTEN"
    return {
        "STRONGROOM_TLS_CERT": str(cert),
        "STRONGROOM_TLS_KEY": str(key),
        "STRONGROOM_TLS_CA": str(directory / CA_CERT_FILE),
        "STRONGROOM_TLS_CLIENT_CA": str(directory / CA_CERT_FILE),
        internal: internal_listen or "127.0.0.1:0",
    }
