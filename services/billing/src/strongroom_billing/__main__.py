"""Entry point ``strongroom-billing``: settings from the environment, then run until SIGTERM."""

from __future__ import annotations

from strongroom_platform.runtime import service_main

from strongroom_billing.bootstrap import run
from strongroom_billing.settings import Settings


def main() -> None:
    service_main("billing", Settings.from_env, run)


if __name__ == "__main__":
    main()
