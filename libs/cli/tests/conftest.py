from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_fakes import Cli, FakeServices, fake_services
from strongroom_cli.__main__ import main

SERVICES = ("scheduler", "catalog", "restore", "billing", "gateway")


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeServices]:
    """Fakes of every service, found through STRONGROOM_*_ADDR; runs in an empty directory."""
    monkeypatch.chdir(tmp_path)
    for name in SERVICES:
        monkeypatch.delenv(f"STRONGROOM_{name.upper()}_ADDR", raising=False)
    monkeypatch.delenv("STRONGROOM_ACCOUNT_ID", raising=False)
    monkeypatch.delenv("STRONGROOM_TOKEN", raising=False)
    monkeypatch.delenv("STRONGROOM_TLS_CA", raising=False)
    monkeypatch.delenv("STRONGROOM_STANDALONE_DIR", raising=False)
    # the fakes speak plaintext; test_cli_login checks that the CLI refuses it by default
    monkeypatch.setenv("STRONGROOM_INSECURE_PLAINTEXT", "1")
    # the tests read times in UTC+8; the default (this machine's zone) is tested apart
    monkeypatch.setenv("STRONGROOM_TZ", "UTC+8")
    monkeypatch.setenv("STRONGROOM_CONFIG", str(tmp_path / "config" / "credentials.json"))
    with fake_services() as fakes:
        for name in SERVICES:
            monkeypatch.setenv(f"STRONGROOM_{name.upper()}_ADDR", fakes.address)
        yield fakes


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``strongroom *argv``; return (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
