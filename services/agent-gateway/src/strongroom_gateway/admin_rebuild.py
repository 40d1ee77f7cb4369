"""``strongroom-admin rebuild --from-bucket``: the command-line adapter of :mod:`strongroom_gateway.rebuild`.

Run with the gateway's environment (``STRONGROOM_PG_DSN``, the object store, the master key and
retired keys), against a fresh database: the gateway's schema is created (migrated) and must hold
no account yet. Then start the services; their first minutes publish what the rebuild enqueued
(docs/operations/disaster-recovery.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack

from strongroom_platform import lifecycle, wiring
from strongroom_platform.clock import SystemClock
from strongroom_platform.settings import INSECURE_PLAINTEXT_ENV, SettingsError

from strongroom_gateway.keys import MasterKeyring
from strongroom_gateway.migrations import SPEC
from strongroom_gateway.rebuild import rebuild_from_bucket
from strongroom_gateway.repository import PgGatewayStore
from strongroom_gateway.settings import Settings

_SHOWN_SKIPS = 20


class RebuildCommand:
    name = "rebuild"
    help = "rebuild the gateway's database (and, through events, the catalog and scheduler) from the bucket"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--from-bucket",
            action="store_true",
            required=True,
            help="read the bucket and the master key (the only source there is; required to say so)",
        )

    def run(self, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
        if not environ.get("STRONGROOM_TLS_CERT"):
            # The rebuild opens no listener: the serving certificate the gateway needs is not
            # required (backend TLS settings still apply).
            environ = {**environ, INSECURE_PLAINTEXT_ENV: "1"}
        try:
            settings = Settings.from_env(environ)
            if settings.master_key is None:
                raise SettingsError("no master key configured (STRONGROOM_MASTER_KEY or STRONGROOM_MASTER_KEY_FILE)")
            keyring = MasterKeyring.load(settings.master_key)
        except SettingsError as exc:
            print(f"strongroom-admin rebuild: {exc}", file=sys.stderr)
            return 2
        return asyncio.run(_rebuild(settings, keyring))


async def _rebuild(settings: Settings, keyring: MasterKeyring) -> int:
    clock = SystemClock()
    platform = settings.platform
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        # As the gateway's own role, which may insert every row a rebuild writes (ADR 0031); with
        # STRONGROOM_PG_MIGRATE_DSN the fresh database is migrated first.
        pool = await lifecycle.open_pool(stack, platform, SPEC)
        if await pool.fetchval("SELECT EXISTS (SELECT 1 FROM accounts)"):
            print(
                "strongroom-admin rebuild: the gateway's database already holds accounts; a rebuild writes into a"
                " fresh database (create an empty one and point STRONGROOM_PG_DSN at it)",
                file=sys.stderr,
            )
            return 1
        objects = await stack.enter_async_context(wiring.object_store(platform, clock))
        report = await rebuild_from_bucket(
            store=PgGatewayStore(pool),
            objects=objects,
            keyring=keyring,
            clock=clock,
            progress=lambda line: print(f"rebuild: {line}", flush=True),
        )
    for skipped in report.skipped[:_SHOWN_SKIPS]:
        print(f"rebuild: skipped {skipped}")
    if len(report.skipped) > _SHOWN_SKIPS:
        print(f"rebuild: ... and {len(report.skipped) - _SHOWN_SKIPS} more skipped")
    print(f"rebuilt {report.summary()} in {time.monotonic() - started:.1f} s")
    print(
        "next: start the services, create an admin token (strongroom-admin token create --account A), and give each"
        " instance's agent a new enrollment token (strongroom instances issue-token ID) to enroll again"
    )
    return 0


COMMAND = RebuildCommand()
