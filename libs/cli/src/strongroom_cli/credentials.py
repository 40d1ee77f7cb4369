"""The operator's credential: ``$STRONGROOM_TOKEN``, else the file ``strongroom login`` wrote (ADR 0024).

The file is ``$STRONGROOM_CONFIG`` or ``$XDG_CONFIG_HOME/strongroom/credentials.json`` (default
``~/.config/strongroom/credentials.json``), mode 0600, holding ``{"token": "...", "account": "..."}``.
A standalone run leaves its admin token in ``admin-token`` and its CA in ``tls/ca.pem`` of its data
directory (``$STRONGROOM_STANDALONE_DIR``, default ``./.strongroom``); the CLI reads them when nothing
else is configured. The CA that verifies the services is ``$STRONGROOM_TLS_CA``, else the login's
``ca_file``, else the standalone one, else the system's trusted CAs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from strongroom_cli.config import ConfigError

STANDALONE_DIR = Path(".strongroom")
STANDALONE_TOKEN = "admin-token"
STANDALONE_CA = Path("tls") / "ca.pem"


@dataclass(frozen=True, slots=True)
class Credential:
    token: str
    account: str = ""
    source: str = ""
    ca_file: str = ""


def standalone_dir(environ: Mapping[str, str], cwd: Path) -> Path:
    """The data directory of a standalone run this CLI talks to."""
    explicit = environ.get("STRONGROOM_STANDALONE_DIR")
    return Path(explicit) if explicit else cwd / STANDALONE_DIR


def ca_file(environ: Mapping[str, str], cwd: Path, credential: Credential | None) -> str:
    """The CA bundle verifying the services ("" = the system's trusted CAs)."""
    if environ.get("STRONGROOM_TLS_CA"):
        return environ["STRONGROOM_TLS_CA"]
    if credential is not None and credential.ca_file:
        return credential.ca_file
    standalone = standalone_dir(environ, cwd) / STANDALONE_CA
    return str(standalone) if standalone.is_file() else ""


def config_path(environ: Mapping[str, str]) -> Path:
    explicit = environ.get("STRONGROOM_CONFIG")
    if explicit:
        return Path(explicit)
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "strongroom" / "credentials.json"


def resolve(environ: Mapping[str, str], cwd: Path) -> Credential | None:
    """The credential to send, by precedence environment > login file > standalone token; None if none."""
    token = environ.get("STRONGROOM_TOKEN", "").strip()
    if token:
        return Credential(token=token, source="STRONGROOM_TOKEN")
    path = config_path(environ)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        data = None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; run `strongroom login` again") from None
    if data is not None:
        if not isinstance(data, dict) or not isinstance(data.get("token"), str):
            raise ConfigError(f"{path} holds no token; run `strongroom login` again")
        return Credential(
            token=data["token"],
            account=str(data.get("account") or ""),
            source=str(path),
            ca_file=str(data.get("ca_file") or ""),
        )
    standalone = standalone_dir(environ, cwd) / STANDALONE_TOKEN
    if standalone.is_file():
        return Credential(token=standalone.read_text().strip(), source=str(standalone))
    return None


def save(environ: Mapping[str, str], credential: Credential) -> Path:
    """Write the login file with mode 0600 (created so, never widened), atomically."""
    path = config_path(environ)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"token": credential.token, "account": credential.account, "ca_file": credential.ca_file}, out)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def forget(environ: Mapping[str, str]) -> Path | None:
    """Remove the login file; returns its path if there was one."""
    path = config_path(environ)
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path
