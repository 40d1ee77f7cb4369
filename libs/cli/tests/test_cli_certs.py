from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cli_fakes import Cli
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from strongroom_platform import certs


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_ca_issue_and_spki(cli: Cli, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    code, out, err = cli("certs", "init-ca", "--dir", str(pki))
    assert (code, err) == (0, "")
    ca = load(pki / "ca.pem")
    assert f"SPKI SHA-256:   {certs.spki_sha256(ca)}" in out
    assert stat.S_IMODE((pki / "ca-key.pem").stat().st_mode) == 0o600

    code, out, err = cli(
        "certs", "issue", "--dir", str(pki), "--name", "gateway", "--dns", "localhost", "--ip", "127.0.0.1"
    )
    assert (code, err) == (0, "")
    leaf = load(pki / "gateway.pem")
    leaf.verify_directly_issued_by(ca)
    assert stat.S_IMODE((pki / "gateway-key.pem").stat().st_mode) == 0o600
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://strongroom/service/gateway"]
    usages = list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert f"Serial:       {leaf.serial_number:x}" in out

    code, out, _ = cli("certs", "spki", "--cert", str(pki / "ca.pem"))
    assert (code, out) == (0, certs.spki_sha256(ca) + "\n")
    code, out, _ = cli("certs", "spki", "--cert", str(pki / "gateway.pem"), "--json")
    assert (code, json.loads(out)) == (0, {"spki_sha256": certs.spki_sha256(leaf)})


def test_issue_client_certificate_as_json(cli: Cli, tmp_path: Path) -> None:
    assert cli("certs", "init-ca", "--dir", str(tmp_path), "--name", "Test CA")[0] == 0
    argv = ["--dir", str(tmp_path), "--name", "operator", "--client", "--days", "2", "--json"]
    code, out, _ = cli("certs", "issue", *argv)
    assert code == 0
    data = json.loads(out)
    assert data["Certificate"] == str(tmp_path / "operator.pem")
    leaf = load(tmp_path / "operator.pem")
    assert data["Serial"] == f"{leaf.serial_number:x}"
    assert leaf.issuer.rfc4514_string() == "CN=Test CA"
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["issue", "--name", "gateway"], "no CA in"),
        (["issue", "--name", "../x"], "invalid certificate name"),
        (["issue", "--name", "op", "--client", "--dns", "h"], "carry no --dns"),
        (["init-ca"], "already holds a CA"),
    ],
)
def test_usage_errors(cli: Cli, tmp_path: Path, argv: list[str], message: str) -> None:
    if argv[0] != "issue" or message != "no CA in":
        assert cli("certs", "init-ca", "--dir", str(tmp_path))[0] == 0
    code, _, err = cli("certs", *argv, "--dir", str(tmp_path))
    assert code == 2
    assert message in err


def test_spki_of_a_file_without_a_certificate(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "x.pem").write_text("nothing here")
    assert cli("certs", "spki", "--cert", str(tmp_path / "x.pem"))[0] == 2
    code, _, err = cli("certs", "spki", "--cert", str(tmp_path / "missing.pem"))
    assert code == 2 and "cannot read" in err


def test_bad_ip_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("certs", "issue", "--dir", str(tmp_path), "--name", "g", "--ip", "localhost")
    assert exited.value.code == 2


def test_certs_need_no_service_address(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".strongroom").mkdir()
    (tmp_path / ".strongroom" / "standalone.json").write_text("broken")
    assert cli("certs", "init-ca", "--dir", "pki")[0] == 0
    assert (tmp_path / "pki" / "ca.pem").is_file()
