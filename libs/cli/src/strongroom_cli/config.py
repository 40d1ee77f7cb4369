"""Where the services are: command-line flags, then ``STRONGROOM_*_ADDR``, then the standalone state file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

SERVICES = ("scheduler", "catalog", "restore", "billing", "gateway")
STANDALONE_FILE = Path(".strongroom") / "standalone.json"


class ConfigError(Exception):
    """An address cannot be determined; the message says how to provide it."""


def _standalone_addresses(data_dir: Path) -> dict[str, str]:
    path = data_dir / STANDALONE_FILE.name
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object of service addresses")
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str) and v}


def resolve_addresses(flags: Mapping[str, str | None], environ: Mapping[str, str], cwd: Path) -> dict[str, str]:
    """{service: host:port} for every service that has an address, by precedence flag > env > state file.

    The state file is ``standalone.json`` of ``$STRONGROOM_STANDALONE_DIR`` (default ``./.strongroom``).
    """
    explicit = environ.get("STRONGROOM_STANDALONE_DIR")
    from_file = _standalone_addresses(Path(explicit) if explicit else cwd / STANDALONE_FILE.parent)
    addresses: dict[str, str] = {}
    for service in SERVICES:
        value = flags.get(service) or environ.get(f"STRONGROOM_{service.upper()}_ADDR") or from_file.get(service)
        if value:
            addresses[service] = value
    return addresses


def missing_address(service: str) -> ConfigError:
    return ConfigError(
        f"no address for the {service} service: pass --{service} HOST:PORT, set STRONGROOM_{service.upper()}_ADDR, "
        f"or run this in the directory where `strongroom standalone` runs ({STANDALONE_FILE})"
    )
