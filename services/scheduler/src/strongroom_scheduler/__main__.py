"""``strongroom-scheduler``: settings from the environment, then serve until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import sys

from strongroom_platform.runtime import configure_logging, run_until_signalled
from strongroom_platform.settings import SettingsError

from strongroom_scheduler import bootstrap
from strongroom_scheduler.settings import Settings


def main() -> None:
    configure_logging("scheduler")
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"strongroom-scheduler: {exc}", file=sys.stderr)
        sys.exit(2)

    async def serve(stop: asyncio.Event) -> None:
        await bootstrap.run(settings, stop)

    run_until_signalled(serve)


if __name__ == "__main__":
    main()
