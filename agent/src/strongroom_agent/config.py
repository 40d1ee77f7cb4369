"""The agent's persistent state: which gateway it enrolled with and its credential.

Stored as ``<state-dir>/agent.json`` with mode 0600 in a 0700 directory. The
state dir defaults to /var/lib/strongroom-agent and can be moved with
``--state-dir`` or ``STRONGROOM_AGENT_STATE_DIR``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from strongroom_agent.transport import GatewayTrust

DEFAULT_STATE_DIR = "/var/lib/strongroom-agent"
STATE_DIR_ENV = "STRONGROOM_AGENT_STATE_DIR"
STATE_FILE = "agent.json"
SPOOL_DIR = "spool"


class StateError(Exception):
    """The state is missing or unreadable; the message says what to do."""


@dataclass(frozen=True)
class AgentState:
    gateway: str
    instance_id: str
    credential: str
    # How the gateway is trusted (ADR 0023): its CA bundle (PEM; None: the system roots), the
    # enrollment's SPKI pins, and plaintext only when enrolled with --insecure-plaintext.
    gateway_ca: str | None = None
    gateway_pins: tuple[str, ...] = ()
    plaintext: bool = False
    # The gateway's agent mTLS listener ("host:port" or ":port" on the enrolled host, ADR 0028);
    # empty: no certificate, every call with the bearer credential.
    mtls_address: str = ""

    @property
    def trust(self) -> GatewayTrust:
        ca = self.gateway_ca.encode() if self.gateway_ca else None
        return GatewayTrust(ca_pem=ca, pins=self.gateway_pins, plaintext=self.plaintext)


def remove_state(state_dir: str) -> bool:
    """Remove the agent's state directory (credential, certificate, caches, spool) after backup of the
    instance was canceled (ADR 0040). Only a directory holding the agent's state file is removed;
    returns whether one was."""
    if not os.path.isfile(state_path(state_dir)):
        return False
    shutil.rmtree(state_dir)
    return True


def resolve_state_dir(cli_value: str | None, environ: Mapping[str, str]) -> str:
    return os.path.abspath(cli_value or environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def save_state(state_dir: str, state: AgentState) -> str:
    """Write the state atomically (temp file + rename), readable only by the owner; return its path."""
    path = state_path(state_dir)
    payload = json.dumps(
        {
            "gateway": state.gateway,
            "instance_id": state.instance_id,
            "credential": state.credential,
            "gateway_ca": state.gateway_ca,
            "gateway_pins": list(state.gateway_pins),
            "plaintext": state.plaintext,
            "mtls_address": state.mtls_address,
        },
        indent=2,
    ).encode()
    write_private(state_dir, path, payload)
    return path


def write_private(state_dir: str, path: str, payload: bytes) -> None:
    """Write ``payload`` to ``path`` in ``state_dir`` (0700), readable only by the owner (0600),
    atomically (temp file + rename)."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    temp = f"{path}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(temp, path)
    except OSError:
        os.unlink(temp)
        raise


def load_state(state_dir: str) -> AgentState:
    path = state_path(state_dir)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise StateError(f"not enrolled: {path} does not exist; run 'strongroom-agent enroll' first") from None
    except PermissionError:
        raise StateError(f"cannot read {path}: permission denied (run as the agent's user)") from None
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) and raw[k] for k in _FIELDS):
        raise StateError(f"{path} is not a valid agent state file; enroll again")
    ca, pins, plaintext = raw.get("gateway_ca"), raw.get("gateway_pins", []), raw.get("plaintext", False)
    mtls_address = raw.get("mtls_address", "")
    if not (ca is None or isinstance(ca, str)) or not isinstance(pins, list) or not isinstance(plaintext, bool):
        raise StateError(f"{path} is not a valid agent state file; enroll again")
    if not isinstance(mtls_address, str):
        raise StateError(f"{path} is not a valid agent state file; enroll again")
    return AgentState(
        gateway=raw["gateway"],
        instance_id=raw["instance_id"],
        credential=raw["credential"],
        gateway_ca=ca,
        gateway_pins=tuple(str(p) for p in pins),
        plaintext=plaintext,
        mtls_address=mtls_address,
    )


_FIELDS = ("gateway", "instance_id", "credential")
