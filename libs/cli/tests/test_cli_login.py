"""``strongroom login``, the credential every command sends, and ``tokens create``."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest
from cli_fakes import GOOD_TOKEN, Cli, FakeServices


def stored(path: Path) -> dict[str, str]:
    return dict(json.loads(path.read_text()))


def test_login_checks_the_token_then_stores_it_0600(
    services: FakeServices, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text(GOOD_TOKEN + "\n")
    code, out, err = cli("--account", "default", "login", "--token-file", str(tmp_path / "token"))
    assert code == 0, err
    assert "logged in as token:" in out and "default:admin" in out
    config = Path(os.environ["STRONGROOM_CONFIG"])
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stored(config) == {"token": GOOD_TOKEN, "account": "default", "ca_file": ""}
    code, _, err = cli("overview")
    assert code == 0, err
    assert services.calls.last("GetOverview").account_id == "default"  # type: ignore[attr-defined]


def test_a_refused_token_is_not_stored(services: FakeServices, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("srt_wrong\n"))
    code, _, err = cli("login")
    assert code == 1
    assert "UNAUTHENTICATED: invalid or expired API token" in err
    assert not Path(os.environ["STRONGROOM_CONFIG"]).exists()


def test_every_call_carries_the_credential_and_the_environment_wins(
    services: FakeServices, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = cli("whoami")
    assert code == 1 and "UNAUTHENTICATED" in err
    assert services.tokens.authorizations[-1] == ""
    monkeypatch.setenv("STRONGROOM_TOKEN", GOOD_TOKEN)
    code, out, err = cli("whoami")
    assert code == 0, err
    assert services.tokens.authorizations[-1] == f"Bearer {GOOD_TOKEN}"
    assert "default:admin" in out


def test_logout_forgets_the_token(services: FakeServices, cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(GOOD_TOKEN)
    assert cli("login", "--token-file", str(tmp_path / "token"))[0] == 0
    code, out, _ = cli("logout")
    assert code == 0 and "removed" in out
    assert not Path(os.environ["STRONGROOM_CONFIG"]).exists()


def test_the_standalone_token_is_used_when_nothing_else_is_configured(
    services: FakeServices, cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / ".strongroom").mkdir()
    (tmp_path / ".strongroom" / "admin-token").write_text(GOOD_TOKEN + "\n")
    code, _, err = cli("whoami")
    assert code == 0, err


def test_tokens_create_prints_the_secret_once(
    services: FakeServices, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRONGROOM_TOKEN", GOOD_TOKEN)
    code, out, err = cli("tokens", "create", "ci", "--grant", "default:operator", "--ttl-days", "7")
    assert code == 0, err
    assert out.strip() == "srt_" + "b" * 24 + "_" + "t" * 43
    assert "shown only now" in err
    request = services.calls.last("CreateToken")
    assert [(g.account_id, g.role) for g in request.grants] == [("default", 2)]  # type: ignore[attr-defined]
    assert request.ttl_seconds == 7 * 86400  # type: ignore[attr-defined]
    code, _, err = cli("tokens", "create", "ci", "--grant", "default:root")
    assert code == 2 and "--grant takes ACCOUNT:ROLE" in err


def test_the_cli_speaks_tls_unless_told_otherwise(
    services: FakeServices, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRONGROOM_INSECURE_PLAINTEXT")
    monkeypatch.setenv("STRONGROOM_TOKEN", GOOD_TOKEN)
    code, _, err = cli("--timeout", "5", "whoami")
    assert code == 1 and "UNAVAILABLE" in err
    assert services.tokens.authorizations == [], "the token never crossed the plaintext connection"


def test_a_standalone_directory_elsewhere_is_found_through_the_environment(
    services: FakeServices, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "elsewhere"
    data.mkdir()
    (data / "admin-token").write_text(GOOD_TOKEN + "\n")
    monkeypatch.setenv("STRONGROOM_STANDALONE_DIR", str(data))
    code, out, err = cli("whoami")
    assert code == 0, err
    assert "default:admin" in out
