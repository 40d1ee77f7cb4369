from __future__ import annotations

import base64

import pytest
from strongroom_cli.pins import spki_sha256_pem
from strongroom_platform import certs


def test_the_pin_is_the_platforms_for_every_kind_of_certificate() -> None:
    ca = certs.CertificateAuthority.create("Pins CA", valid_days=30)
    service = ca.issue_service("gateway", dns=["gw.example"], ips=["127.0.0.1"], valid_days=30)
    client = ca.issue_client("operator", valid_days=7)
    for pem in (ca.cert_pem, service.cert_pem, client.cert_pem):
        assert spki_sha256_pem(pem) == certs.spki_sha256(pem)
    # a bundle: the first certificate's pin, whatever text surrounds it
    assert spki_sha256_pem(b"# agents' CA\n" + ca.cert_pem + service.cert_pem) == certs.spki_sha256(ca.cert_pem)
    assert spki_sha256_pem(ca.cert_pem) != spki_sha256_pem(service.cert_pem)


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nAgEF\n-----END CERTIFICATE-----\n",
    ],
    ids=["empty", "not-base64", "empty-sequence", "not-a-sequence"],
)
def test_what_is_not_a_certificate_is_a_value_error(pem: bytes) -> None:
    with pytest.raises(ValueError):
        spki_sha256_pem(pem)


def test_a_truncated_certificate_is_a_value_error() -> None:
    ca = certs.CertificateAuthority.create("Pins CA", valid_days=30)
    body = b"".join(ca.cert_pem.splitlines()[1:-1])
    der = base64.b64decode(body)[:200]
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.b64encode(der) + b"\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError):
        spki_sha256_pem(pem)
