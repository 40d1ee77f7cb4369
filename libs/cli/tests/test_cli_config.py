from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from cli_fakes import Cli, fake_services
from strongroom_cli.config import ConfigError, resolve_addresses


def write_state(directory: Path, data: object) -> None:
    (directory / ".strongroom").mkdir(exist_ok=True)
    (directory / ".strongroom" / "standalone.json").write_text(json.dumps(data))


def test_precedence_flag_env_file(tmp_path: Path) -> None:
    write_state(tmp_path, {"scheduler": "file:1", "catalog": "file:2", "billing": "file:4", "gateway": "file:5"})
    addresses = resolve_addresses(
        {"scheduler": "flag:1", "catalog": None}, {"STRONGROOM_CATALOG_ADDR": "env:2"}, tmp_path
    )
    # the gateway too: operators verify backups there (ADR 0033)
    assert addresses == {"scheduler": "flag:1", "catalog": "env:2", "billing": "file:4", "gateway": "file:5"}


def test_no_state_file_is_fine(tmp_path: Path) -> None:
    assert resolve_addresses({}, {}, tmp_path) == {}


@pytest.mark.parametrize("content", ["not json", "[1, 2]"])
def test_broken_state_file_is_reported(tmp_path: Path, content: str) -> None:
    (tmp_path / ".strongroom").mkdir()
    (tmp_path / ".strongroom" / "standalone.json").write_text(content)
    with pytest.raises(ConfigError, match="standalone.json"):
        resolve_addresses({}, {}, tmp_path)


def test_cli_finds_services_through_the_standalone_file(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("SCHEDULER", "CATALOG", "RESTORE", "BILLING"):
        monkeypatch.delenv(f"STRONGROOM_{name}_ADDR", raising=False)
    monkeypatch.delenv("STRONGROOM_STANDALONE_DIR", raising=False)
    monkeypatch.setenv("STRONGROOM_INSECURE_PLAINTEXT", "1")  # the fakes speak plaintext
    with fake_services() as fakes:
        write_state(tmp_path, {"scheduler": fakes.address, "billing": fakes.address, "gateway": "127.0.0.1:9"})
        code, out, err = cli("overview")
        assert (code, err) == (0, "")
        assert out.splitlines()[1].split() == ["Backed-up", "instances:", "5"]


def test_standalone_is_dispatched_lazily(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("strongroom_cli.standalone")
    fake.main = lambda argv: seen.append(argv) or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "strongroom_cli.standalone", fake)
    code, _, _ = cli("standalone", "--data-dir", "x", "--json")
    assert code == 7
    assert cli("--timeout", "3", "--json", "standalone", "--backup-dir", "y")[0] == 7
    assert seen == [["--data-dir", "x", "--json"], ["--backup-dir", "y"]]
    # an instance named "standalone" is not the standalone command
    assert cli("--timeout", "3", "instances", "show", "standalone")[0] == 1
    assert len(seen) == 2


def test_help_lists_every_group(cli: Cli) -> None:
    with pytest.raises(SystemExit) as info:
        cli("--help")
    assert info.value.code == 0


def test_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    from strongroom_cli.app import build_parser

    text = build_parser().format_help()
    for group in ("instances", "jobs", "versions", "browse", "restore", "overview", "standalone"):
        assert group in text
