"""Entry point ``strongroom-gateway``: settings from the environment, then run until SIGTERM."""

from __future__ import annotations

from strongroom_platform.collector import freeze_start_up_heap
from strongroom_platform.runtime import service_main

from strongroom_gateway.bootstrap import run
from strongroom_gateway.settings import Settings


def main() -> None:
    freeze_start_up_heap()  # its modules are imported: full collections skip them (ADR 0076)
    service_main("gateway", Settings.from_env, run)


if __name__ == "__main__":
    main()
