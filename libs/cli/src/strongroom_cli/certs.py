"""``strongroom certs ...``: the built-in CA for standalone mode, tests and small deployments.

- ``certs init-ca --dir D``: a new CA in ``D/ca.pem`` + ``D/ca-key.pem`` (refuses to replace one).
- ``certs issue --dir D --name N [--dns H]... [--ip A]... [--client] [--days N]``: a certificate
  signed by the CA of ``D``, written as ``D/N.pem`` + ``D/N-key.pem``; a service certificate
  (server and client use, URI SAN ``spiffe://strongroom/service/N``) unless ``--client``.
- ``certs spki --cert F``: the pin of ``F``'s public key (base64 SHA-256 of the SubjectPublicKeyInfo).

Private keys are written 0600. Production uses certificate files from its own PKI (cert-manager)
instead; see docs/adr/0023-tls-everywhere.md.

The CA code is the platform's (``strongroom_platform.certs``), which comes with the extra
``strongroom-cli[standalone]``; without it the commands say so instead of failing to import.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import json
from pathlib import Path
from types import ModuleType

from strongroom_cli.context import Context, UsageError


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = groups.add_parser("certs", help="the built-in certificate authority (TLS files for standalone and tests)")
    commands = group.add_subparsers(dest="certs_command", metavar="ACTION", required=True)

    init = commands.add_parser("init-ca", parents=[common], help="create a CA in a directory")
    init.add_argument("--dir", required=True, type=Path, help="directory of the CA files (created if missing)")
    init.add_argument("--name", default="Strongroom CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=None, help="validity in days (default 3650)")
    init.set_defaults(command=init_ca, local=True)

    issue = commands.add_parser("issue", parents=[common], help="issue a certificate signed by the CA of --dir")
    issue.add_argument("--dir", required=True, type=Path, help="directory holding ca.pem and ca-key.pem")
    issue.add_argument("--name", required=True, help="certificate name: the service (gateway, catalog, ...) or client")
    issue.add_argument("--dns", action="append", default=[], metavar="HOST", help="DNS name SAN (repeatable)")
    issue.add_argument("--ip", action="append", default=[], type=_ip, metavar="ADDR", help="IP SAN (repeatable)")
    issue.add_argument("--client", action="store_true", help="a client-only certificate (no server use)")
    issue.add_argument("--days", type=int, default=None, help="validity in days (default 90, --client 7)")
    issue.set_defaults(command=issue_cert, local=True)

    spki = commands.add_parser("spki", parents=[common], help="print the SPKI SHA-256 pin of a certificate")
    spki.add_argument("--cert", required=True, type=Path, help="PEM or DER certificate file")
    spki.set_defaults(command=spki_pin, local=True)


def _platform_certs() -> ModuleType:
    """``strongroom_platform.certs``, or a UsageError saying which install brings it."""
    try:
        return importlib.import_module("strongroom_platform.certs")
    except ImportError:
        raise UsageError("the certs commands need the platform: pip install 'strongroom-cli[standalone]'") from None


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _report(context: Context, fields: dict[str, str]) -> None:
    if context.json:
        print(json.dumps(fields, indent=2))
        return
    width = max(len(k) for k in fields) + 1
    for key, value in fields.items():
        print(f"{key + ':':<{width}} {value}")


async def init_ca(context: Context) -> int:
    certs = _platform_certs()
    directory: Path = context.args.dir
    days = context.args.days if context.args.days is not None else certs.CA_VALID_DAYS
    if (directory / certs.CA_CERT_FILE).exists() or (directory / certs.CA_KEY_FILE).exists():
        raise UsageError(f"{directory} already holds a CA ({certs.CA_CERT_FILE}); remove it first to start over")
    if days < 1:
        raise UsageError("--days must be at least 1")
    ca = certs.CertificateAuthority.create(context.args.name, valid_days=days)
    path = certs.write_ca(directory, ca)
    files = {"CA certificate": str(path), "CA key": str(directory / certs.CA_KEY_FILE)}
    _report(context, files | _describe(certs, ca.cert_pem))
    return 0


async def issue_cert(context: Context) -> int:
    certs = _platform_certs()
    args = context.args
    directory: Path = args.dir
    try:
        ca = certs.load_ca(directory)
    except FileNotFoundError:
        raise UsageError(f"no CA in {directory}: run `strongroom certs init-ca --dir {directory}` first") from None
    try:
        if args.client:
            if args.dns or args.ip:
                raise UsageError("--client certificates carry no --dns or --ip")
            pair = ca.issue_client(args.name, valid_days=args.days or certs.CLIENT_VALID_DAYS)
        else:
            days = args.days or certs.SERVICE_VALID_DAYS
            pair = ca.issue_service(args.name, dns=args.dns, ips=args.ip, valid_days=days)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cert_path, key_path = certs.write_pair(directory, args.name, pair)
    _report(context, {"Certificate": str(cert_path), "Key": str(key_path)} | _describe(certs, pair.cert_pem))
    return 0


async def spki_pin(context: Context) -> int:
    certs = _platform_certs()
    path: Path = context.args.cert
    try:
        pin = certs.spki_sha256(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise UsageError(f"{path} holds no certificate") from None
    if context.json:
        print(json.dumps({"spki_sha256": pin}))
    else:
        print(pin)
    return 0


def _describe(certs: ModuleType, cert_pem: bytes) -> dict[str, str]:
    cert = certs.load_certificate(cert_pem)
    return {
        "Subject": cert.subject.rfc4514_string(),
        "Serial": f"{cert.serial_number:x}",
        "Valid until": cert.not_valid_after_utc.isoformat(),
        "SPKI SHA-256": certs.spki_sha256(cert),
    }
