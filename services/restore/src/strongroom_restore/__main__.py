"""Entry point ``strongroom-restore``: settings from the environment, then run until SIGTERM."""

from __future__ import annotations

import asyncio
import os

from strongroom_platform.runtime import configure_logging, run_until_signalled

from strongroom_restore.bootstrap import run
from strongroom_restore.settings import Settings


def main() -> None:
    configure_logging("restore")
    settings = Settings.from_env(os.environ)

    async def service(stop: asyncio.Event) -> None:
        await run(settings, stop)

    run_until_signalled(service)


if __name__ == "__main__":
    main()
