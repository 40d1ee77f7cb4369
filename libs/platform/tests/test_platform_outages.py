"""A database outage is recognised however asyncpg reports it (``strongroom_platform.outages``), on real PostgreSQL.

The case that failed a job in CI: the connection is reset inside ``async with
connection.transaction()``; what leaves the block is the transaction exit's ``InterfaceError``
("the underlying connection is closed"), not the reset. Both the gRPC mapping and the consumer's
retry rule must read that as the database being away.
"""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from strongroom_platform.grpc_errors import DATABASE_UNAVAILABLE, INTERNAL_ERROR, status_for
from strongroom_platform.outages import database_down
from strongroom_platform.poison import is_transient
from strongroom_testing.faults import TcpProxy


def _proxy_target(dsn: str) -> tuple[str, int]:
    host, port = dsn.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return host, int(port)


async def _failure_of(run: object) -> BaseException:
    try:
        await run  # type: ignore[misc]
    except Exception as exc:
        return exc
    raise AssertionError("the operation succeeded although the database went away")


@pytest.mark.integration
async def test_a_reset_inside_a_transaction_is_the_database_away(pg_dsn: str) -> None:
    async with TcpProxy(*_proxy_target(pg_dsn)) as proxy:
        connection = await asyncpg.connect(proxy.dsn_via(pg_dsn))

        async def work() -> None:
            async with connection.transaction():
                await connection.execute("SELECT 1")
                await proxy.cut()
                await connection.execute("SELECT 2")

        failure = await _failure_of(work())
        await connection.close()
    # What asyncpg raises today; if it changes, the mapping below must still hold.
    assert isinstance(failure, asyncpg.exceptions.InterfaceError), repr(failure)
    assert database_down(failure)
    assert status_for(failure) == (grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)
    assert is_transient(failure)


@pytest.mark.integration
async def test_a_terminated_backend_inside_a_transaction_is_the_database_away(pg_dsn: str) -> None:
    connection = await asyncpg.connect(pg_dsn)
    killer = await asyncpg.connect(pg_dsn)
    try:
        pid = connection.get_server_pid()

        async def work() -> None:
            async with connection.transaction():
                await killer.execute("SELECT pg_terminate_backend($1)", pid)
                await connection.execute("SELECT 2")

        failure = await _failure_of(work())
    finally:
        await killer.close()
        await connection.close()
    assert status_for(failure) == (grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)
    assert is_transient(failure)


@pytest.mark.integration
async def test_using_a_connection_closed_earlier_is_the_database_away(pg_dsn: str) -> None:
    async with TcpProxy(*_proxy_target(pg_dsn)) as proxy:
        connection = await asyncpg.connect(proxy.dsn_via(pg_dsn))
        await proxy.cut()
        await _failure_of(connection.execute("SELECT 1"))  # notices the reset and closes
        failure = await _failure_of(connection.execute("SELECT 2"))
        await connection.close()
    assert isinstance(failure, asyncpg.exceptions.InterfaceError), repr(failure)
    assert status_for(failure)[0] == grpc.StatusCode.UNAVAILABLE


def test_misusing_a_connection_is_a_bug_not_an_outage() -> None:
    misuse = asyncpg.exceptions.InterfaceError("cannot perform operation: another operation is in progress")
    assert not database_down(misuse)
    assert status_for(misuse) == (grpc.StatusCode.INTERNAL, INTERNAL_ERROR)


def test_an_error_raised_while_handling_an_outage_is_the_outage() -> None:
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError:
            raise RuntimeError("cleanup failed") from None
    except RuntimeError as suppressed:
        # ``from None`` hides the context from tracebacks but keeps it; the chain still counts.
        assert database_down(suppressed)
