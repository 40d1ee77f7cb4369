"""Entry point ``strongroom-restore``: settings from the environment, then run until SIGTERM."""

from __future__ import annotations

from strongroom_platform.runtime import service_main

from strongroom_restore.bootstrap import run
from strongroom_restore.settings import Settings


def main() -> None:
    service_main("restore", Settings.from_env, run)


if __name__ == "__main__":
    main()
