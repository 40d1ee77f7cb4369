"""The install-and-enroll commands of ``instances activate`` (ADR 0045)."""

from __future__ import annotations

import base64
import shlex
import subprocess
from pathlib import Path

import pytest
from cli_fakes import Cli, FakeServices
from strongroom_cli.agent_install import CA_PATH, AgentInstall, apt_command, yum_command
from strongroom_platform import certs

REPO = "https://packages.example.net/strongroom"


def inner(command: str) -> str:
    """The script of a ``sh -c '...'`` one-liner; also checks that sh parses it."""
    argv = shlex.split(command)
    assert argv[:2] == ["sh", "-c"] and len(argv) == 3
    subprocess.run(["sh", "-n", "-c", argv[2]], check=True)
    return argv[2]


def test_apt_command_adds_the_signed_repository_installs_enrolls_and_enables() -> None:
    script = inner(apt_command(AgentInstall("gw.example.net:7443", REPO + "/"), "tok en'$x"))
    steps = script.split("; ")
    assert steps[0] == "set -e"
    assert f"curl -fsSL {REPO}/strongroom.asc -o /etc/apt/keyrings/strongroom.asc" in steps
    assert (
        f"echo 'deb [signed-by=/etc/apt/keyrings/strongroom.asc] {REPO}/apt stable main'"
        " > /etc/apt/sources.list.d/strongroom.list"
    ) in steps
    assert steps.index("apt-get install -y strongroom-agent") < steps.index(
        "strongroom-agent enroll --gateway gw.example.net:7443 --token 'tok en'\"'\"'$x'"
    )
    assert steps[-1] == "systemctl enable --now strongroom-agent.service"


def test_yum_command_and_an_embedded_pinned_ca(tmp_path: Path) -> None:
    pem = certs.CertificateAuthority.create().cert_pem
    script = inner(yum_command(AgentInstall("gw:7443", REPO, pem, ("PIN=",)), "t"))
    steps = script.split("; ")
    assert steps[1].startswith("printf '[strongroom]\\nname=Strongroom\\nbaseurl=" + REPO + "/yum\\n")
    assert "repo_gpgcheck=1" in steps[1] and f"gpgkey={REPO}/strongroom.asc" in steps[1]
    assert "dnf install -y strongroom-agent" in steps
    encoded = base64.b64encode(pem).decode()
    assert f"echo {encoded} | base64 -d > {CA_PATH}" in steps
    assert f"strongroom-agent enroll --gateway gw:7443 --token t --ca-file {CA_PATH} --pin PIN=" in steps


def test_activate_prints_the_one_liners(
    services: FakeServices, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = certs.CertificateAuthority.create()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    monkeypatch.setenv("STRONGROOM_AGENT_REPO", REPO)
    code, out, _ = cli("instances", "activate", "web-9", "--agent-gateway", "gw:7443", "--agent-ca", str(ca_file))
    assert code == 0
    lines = out.splitlines()
    apt = next(line for line in lines if line.strip().startswith("Debian/Ubuntu:"))
    pin = certs.spki_sha256(ca.cert_pem)
    assert f"strongroom-agent enroll --gateway gw:7443 --token tok-secret --ca-file {CA_PATH} --pin {pin}" in apt
    assert any(line.strip().startswith("RHEL/Rocky/Alma:") for line in lines)


def test_activate_without_a_repository_prints_the_enroll_hint(services: FakeServices, cli: Cli) -> None:
    code, out, _ = cli("instances", "activate", "web-9", "--agent-gateway", "gw:7443")
    assert code == 0
    assert "strongroom-agent enroll --gateway HOST:PORT --token TOKEN" in out


def test_activate_refuses_a_repository_that_is_no_url(services: FakeServices, cli: Cli) -> None:
    code, _, err = cli("instances", "activate", "web-9", "--agent-gateway", "gw:7443", "--agent-repo", "dist/")
    assert code == 2
    assert "--agent-repo must be an http(s) URL" in err
