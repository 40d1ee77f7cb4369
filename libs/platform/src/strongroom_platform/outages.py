"""Whether a failure means "the metadata database is away" — one answer for every caller.

The gRPC mapping (:mod:`strongroom_platform.grpc_errors`: ``UNAVAILABLE``, "retry") and the
consumer's retry rule (:mod:`strongroom_platform.poison`: retry without limit) must agree, or a
database restart fails a job in one place and is waited out in the other.

The whole cause chain counts: a failure raised while handling an outage is the outage. asyncpg
shows why — when a connection is reset inside ``async with connection.transaction()``, the
block's ``ConnectionDoesNotExistError`` is replaced by the ``InterfaceError`` that the
transaction's exit raises on the closed connection ("cannot call Transaction.__aexit__(): the
underlying connection is closed"), with the reset as its context.
"""

from __future__ import annotations

import re

import asyncpg

__all__ = ["DATABASE_DOWN", "database_down"]

# The database cannot be reached or is going away: the operation may succeed when it is back.
# ConnectionError (refused, reset, aborted) is the socket under asyncpg: the services open no
# other raw sockets in a call (S3 errors arrive as the object store's own exceptions, peers'
# as grpc.aio.AioRpcError).
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    ConnectionError,
)

# asyncpg reports a connection or pool that is already closed as a plain InterfaceError (the
# class it also uses for misuse, which is a bug, not an outage); only its text tells them apart.
_CLOSED = re.compile(r"\b(connection|pool) is clos(ed|ing)\b")


def database_down(exc: BaseException) -> bool:
    """Whether ``exc``, or any exception in its cause or context chain, says the database is away."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DATABASE_DOWN):
            return True
        if isinstance(current, asyncpg.exceptions.InterfaceError) and _CLOSED.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False
