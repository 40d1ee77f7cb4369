"""The SPKI pin of a PEM certificate, read with the standard library only.

The operator CLI installs without the platform or ``cryptography`` (ADR 0051), yet ``instances
activate --agent-ca`` prints the pin of the agents' CA. A certificate is DER: the pin is the base64
SHA-256 of the ``subjectPublicKeyInfo`` element of ``tbsCertificate``, found by walking the
tag-length-value headers (RFC 5280 §4.1), exactly the bytes ``strongroom_platform.certs.spki_sha256``
hashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

__all__ = ["spki_sha256_pem"]

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.S)
_SEQUENCE, _VERSION = 0x30, 0xA0


def spki_sha256_pem(pem: bytes) -> str:
    """Base64 SHA-256 of the DER SubjectPublicKeyInfo of the first certificate in ``pem``;
    ValueError when ``pem`` holds no well-formed certificate."""
    match = _PEM.search(pem)
    if match is None:
        raise ValueError("no PEM certificate found")
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except binascii.Error:
        raise ValueError("the PEM certificate is not valid base64") from None
    certificate = _element(der, 0, _SEQUENCE)
    tbs_start, _ = _content(der, certificate[0])
    tbs = _element(der, tbs_start, _SEQUENCE)
    position, _ = _content(der, tbs[0])
    if der[position] == _VERSION:
        position = _skip(der, position)
    # serialNumber, signature, issuer, validity, subject, then subjectPublicKeyInfo
    for _ in range(5):
        position = _skip(der, position)
    start, end = _element(der, position, _SEQUENCE)
    return base64.b64encode(hashlib.sha256(der[start:end]).digest()).decode("ascii")


def _header(der: bytes, position: int) -> tuple[int, int]:
    """(offset of the content, length of the content) of the element at ``position``."""
    if position + 2 > len(der):
        raise ValueError("truncated certificate")
    first = der[position + 1]
    if first < 0x80:
        return position + 2, first
    count = first & 0x7F
    if count == 0 or count > 4 or position + 2 + count > len(der):
        raise ValueError("malformed certificate length")
    return position + 2 + count, int.from_bytes(der[position + 2 : position + 2 + count], "big")


def _content(der: bytes, position: int) -> tuple[int, int]:
    start, length = _header(der, position)
    if start + length > len(der):
        raise ValueError("truncated certificate")
    return start, start + length


def _skip(der: bytes, position: int) -> int:
    """The position after the element at ``position``."""
    return _content(der, position)[1]


def _element(der: bytes, position: int, tag: int) -> tuple[int, int]:
    """(start, end) of the whole element at ``position``, which must carry ``tag``."""
    if position >= len(der) or der[position] != tag:
        raise ValueError("not an X.509 certificate")
    return position, _skip(der, position)
