"""Entry point ``strongroom-catalog``: settings from the environment, then run until SIGTERM."""

from __future__ import annotations

from strongroom_platform.runtime import service_main

from strongroom_catalog.bootstrap import run
from strongroom_catalog.settings import Settings


def main() -> None:
    service_main("catalog", Settings.from_env, run)


if __name__ == "__main__":
    main()
