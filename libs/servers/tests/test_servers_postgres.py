"""LocalPostgres: initdb + start, SELECT version() over TCP with asyncpg, durable restart keeps data."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from strongroom_servers import LocalPostgres
from strongroom_testing.fixtures import start_or_skip

pytestmark = pytest.mark.integration


async def test_version_over_tcp(tmp_path: Path) -> None:
    with start_or_skip(LocalPostgres(None, tmp_path / "pgdata")) as pg:
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        conn = await asyncpg.connect(pg.dsn)
        try:
            version = await conn.fetchval("SELECT version()")
            fsync = await conn.fetchval("SHOW fsync")
        finally:
            await conn.close()
        assert version.startswith("PostgreSQL ")
        assert pg.server_version() == version
        assert fsync == "off"  # test mode
    assert not pg.alive


async def test_durable_restart_keeps_table(tmp_path: Path) -> None:
    data_dir = tmp_path / "durable"
    with start_or_skip(LocalPostgres(None, data_dir, durable=True)) as pg:
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SHOW fsync") == "on"
            await conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
            await conn.execute("INSERT INTO kept VALUES (1, 'survives a restart')")
        finally:
            await conn.close()

    # start() on an initialised data dir must only start it (no initdb); the port may differ.
    with start_or_skip(LocalPostgres(None, data_dir, durable=True)) as pg:
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT note FROM kept WHERE id = 1") == "survives a restart"
        finally:
            await conn.close()


def test_refuses_non_cluster_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "junk"
    data_dir.mkdir()
    (data_dir / "stray.txt").write_text("not a cluster")
    with pytest.raises(Exception, match="holds no PostgreSQL cluster"):
        start_or_skip(LocalPostgres(None, data_dir))
