"""Standalone's database (ADR 0031): the superuser only provisions; the owner migrates and sets the
trusted clock; each service logs in as its own role; a shifted clock is refused off the filesystem store."""

from __future__ import annotations

import datetime as dt
import os

import asyncpg
import pytest
from strongroom_cli.standalone import DATABASE, provision_database
from strongroom_platform.pg_roles import LoginRefused, check_service_login
from strongroom_platform.schemas import installed_specs
from strongroom_platform.trusted_time import check_offset_allowed, clock_offset

pytestmark = pytest.mark.integration


async def test_provisioned_database_runs_services_as_their_roles_at_the_given_offset(pg_server_dsn: str) -> None:
    if os.environ.get("TEST_PG_DSN"):
        pytest.skip("standalone provisions its embedded server, which trusts local logins; TEST_PG_DSN may not")
    superuser = await asyncpg.connect(pg_server_dsn)
    try:
        await superuser.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        owner, databases = await provision_database(pg_server_dsn, clock_offset=dt.timedelta(days=31))
        # A restart without the flag puts the clock back.
        again, _ = await provision_database(pg_server_dsn, clock_offset=dt.timedelta(0))
        assert again == owner
        specs = {s.schema: s for s in installed_specs()}
        conn = await asyncpg.connect(owner)
        try:
            assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            assert await clock_offset(conn) == dt.timedelta(0)
        finally:
            await conn.close()
        for service, dsn in databases.items():
            conn = await asyncpg.connect(dsn)
            try:
                assert await check_service_login(conn, specs[service]) == f"strongroom_{service}"
            finally:
                await conn.close()
        await provision_database(pg_server_dsn, clock_offset=dt.timedelta(days=31))
        conn = await asyncpg.connect(databases["catalog"])
        try:
            offset = await clock_offset(conn)
            assert offset == dt.timedelta(days=31)
            assert await conn.fetchval("SELECT trusted.now() - now()") == dt.timedelta(days=31)
        finally:
            await conn.close()
        check_offset_allowed(offset, "file:/srv/objects")
        with pytest.raises(LoginRefused, match="only standalone mode with the filesystem object store"):
            check_offset_allowed(offset, "s3")
    finally:
        await superuser.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await superuser.close()
