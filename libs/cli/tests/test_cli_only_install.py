"""The operator CLI installs alone: wheels of strongroom-cli, strongroom-proto and strongroom-zones in a
fresh environment bring gRPC, protobuf and rich, and none of the services or embedded servers (issue 12).

The installed ``strongroom`` then lists instances from the fake services over gRPC, and the
platform-only commands (``standalone``, ``certs``) say which extra brings them instead of failing
to import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_fakes import FakeServices

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
WHEELS = ("strongroom-proto", "strongroom-zones", "strongroom-cli")
# The CLI's own dependencies (grpcio, protobuf, rich) take about 25 MB; the services, their drivers and
# the embedded servers (asyncpg, aiokafka, faust, minio, embedded PostgreSQL, ...) would add 100 MB more.
SIZE_LIMIT_BYTES = 60 * 1024 * 1024


def _uv() -> str:
    found = shutil.which("uv") or str(REPO / ".bootstrap" / "bin" / "uv")
    if not Path(found).exists():
        pytest.fail("uv is not installed: run `make sync` first")
    return found


def _run(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=600, check=False)


@pytest.fixture(scope="module")
def cli_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtual environment holding only the CLI's wheels and what they depend on; its bin directory."""
    base = tmp_path_factory.mktemp("cli-only")
    wheels, venv = base / "wheels", base / "venv"
    uv = _uv()
    for package in WHEELS:
        built = _run(uv, "build", "--quiet", "--package", package, "--wheel", "--out-dir", wheels, "--directory", REPO)
        assert built.returncode == 0, built.stderr
    made = _run(uv, "venv", "--quiet", "--python", sys.executable, venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = _run(uv, "pip", "install", "--quiet", "--python", python, *sorted(wheels.glob("*.whl")))
    assert installed.returncode == 0, installed.stderr
    yield venv / "bin"


def _site_packages(bin_dir: Path) -> Path:
    found = list((bin_dir.parent / "lib").glob("python3.*/site-packages"))
    assert len(found) == 1, found
    return found[0]


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file() and not path.is_symlink())


def test_the_cli_installs_without_the_platform(cli_only: Path) -> None:
    site = _site_packages(cli_only)
    names = {path.name.split("-")[0].lower() for path in site.glob("*.dist-info")}
    assert {"strongroom_cli", "strongroom_proto", "strongroom_zones", "grpcio", "protobuf", "rich"} <= names
    heavy = names & {"strongroom_platform", "strongroom_servers", "strongroom_gateway", "asyncpg", "faust_streaming"}
    assert heavy == set(), f"the CLI-only install pulled in {sorted(heavy)}"
    size = _size(site)
    print(f"CLI-only install: {len(names)} distributions, {size / 1024 / 1024:.1f} MiB in site-packages")
    assert size < SIZE_LIMIT_BYTES


def test_the_installed_cli_talks_to_the_services(cli_only: Path, services: FakeServices) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VIRTUAL_ENV")}
    version = _run(cli_only / "strongroom", "--version", env=env)
    assert version.returncode == 0 and "strongroom" in version.stdout, version.stderr
    listed = _run(cli_only / "strongroom", "instances", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["i-1", "i-2"]


@pytest.mark.parametrize(
    "argv",
    [("standalone",), ("certs", "init-ca", "--dir", "ca")],
    ids=["standalone", "certs"],
)
def test_platform_commands_name_the_extra(cli_only: Path, services: FakeServices, argv: tuple[str, ...]) -> None:
    result = _run(cli_only / "strongroom", *argv)
    assert result.returncode != 0
    assert "strongroom-cli[standalone]" in result.stderr
    assert "Traceback" not in result.stderr
