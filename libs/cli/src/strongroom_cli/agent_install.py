"""The one-line install-and-enroll commands ``strongroom instances activate`` prints (ADR 0045).

Given the agent-facing gateway address, the base URL where ``make packages``' ``dist/`` is
published (``apt/``, ``yum/``, ``strongroom.asc``) and optionally the CA bundle agents must trust
(embedded, with its SPKI pin), each command — run as root on the host — adds the package
repository (signed: the key comes from the same base URL), installs ``strongroom-agent``, enrolls
it with the instance's one-time token and enables the service.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

STATE_DIR = "/var/lib/strongroom-agent"
# Inside the state directory, so that removing the agent (purge, or cancel) removes it too.
CA_PATH = f"{STATE_DIR}/gateway-ca.pem"
KEYRING = "/etc/apt/keyrings/strongroom.asc"


@dataclass(frozen=True, slots=True)
class AgentInstall:
    """Where agents get the package and reach the gateway."""

    gateway: str
    repo: str
    ca_pem: bytes | None = None
    ca_pins: tuple[str, ...] = ()


def _enroll(install: AgentInstall, token: str) -> list[str]:
    steps: list[str] = []
    enroll = ["strongroom-agent", "enroll", "--gateway", install.gateway, "--token", token]
    if install.ca_pem is not None:
        encoded = base64.b64encode(install.ca_pem).decode("ascii")
        steps += [f"install -d -m 0700 {STATE_DIR}", f"echo {encoded} | base64 -d > {CA_PATH}"]
        enroll += ["--ca-file", CA_PATH]
        for pin in install.ca_pins:
            enroll += ["--pin", pin]
    steps += [shlex.join(enroll), "systemctl enable --now strongroom-agent.service"]
    return steps


def _one_line(steps: list[str]) -> str:
    return shlex.join(["sh", "-c", "set -e; " + "; ".join(steps)])


def apt_command(install: AgentInstall, token: str) -> str:
    """Debian and Ubuntu: the apt repository ``<repo>/apt`` (suite ``stable``, component ``main``)."""
    repo = install.repo.rstrip("/")
    source = f"deb [signed-by={KEYRING}] {repo}/apt stable main"
    steps = [
        "install -d -m 0755 /etc/apt/keyrings",
        f"curl -fsSL {shlex.quote(repo + '/strongroom.asc')} -o {KEYRING}",
        f"echo {shlex.quote(source)} > /etc/apt/sources.list.d/strongroom.list",
        "apt-get update",
        "apt-get install -y strongroom-agent",
        *_enroll(install, token),
    ]
    return _one_line(steps)


def yum_command(install: AgentInstall, token: str) -> str:
    """RHEL, Rocky, Alma, Fedora: the yum repository ``<repo>/yum`` (repository metadata signed)."""
    repo = install.repo.rstrip("/")
    definition = (
        f"[strongroom]\\nname=Strongroom\\nbaseurl={repo}/yum\\nenabled=1\\n"
        f"repo_gpgcheck=1\\ngpgcheck=0\\ngpgkey={repo}/strongroom.asc\\n"
    )
    steps = [
        f"printf {shlex.quote(definition)} > /etc/yum.repos.d/strongroom.repo",
        "dnf install -y strongroom-agent",
        *_enroll(install, token),
    ]
    return _one_line(steps)
