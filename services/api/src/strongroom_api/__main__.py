"""Entry point ``strongroom-api``: settings from the environment, then serve until SIGTERM."""

from __future__ import annotations

from strongroom_platform.runtime import service_main

from strongroom_api.bootstrap import run
from strongroom_api.settings import Settings


def main() -> None:
    service_main("api", Settings.from_env, run)


if __name__ == "__main__":
    main()
