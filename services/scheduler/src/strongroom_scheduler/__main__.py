"""Entry point ``strongroom-scheduler``: settings from the environment, then run until SIGTERM."""

from __future__ import annotations

from strongroom_platform.runtime import service_main

from strongroom_scheduler.bootstrap import run
from strongroom_scheduler.settings import Settings


def main() -> None:
    service_main("scheduler", Settings.from_env, run)


if __name__ == "__main__":
    main()
