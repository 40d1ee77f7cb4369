"""TokenService through the interceptor: admins mint and revoke, nobody else does."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from strongroom.auth.v1 import auth_pb2, auth_pb2_grpc
from strongroom_platform.auth import Authenticator, AuthInterceptor, InMemoryTokenStore, Role, TokenVerifier
from strongroom_platform.auth.token_api import TokenServicer, bootstrap_token, register
from strongroom_platform.auth.tokens import parse_token
from strongroom_platform.clock import utc
from strongroom_platform.runtime import start_grpc_server
from strongroom_platform.testing import FakeClock, InMemoryAuditSink


@dataclass
class Stack:
    tokens: auth_pb2_grpc.TokenServiceStub
    admin: str
    clock: FakeClock
    audit: InMemoryAuditSink


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    clock = FakeClock(utc(2026, 12, 1))
    store = InMemoryTokenStore()
    admin = await bootstrap_token(
        "acme", Role.ADMIN, name="first", lifetime=dt.timedelta(days=1), store=store, clock=clock
    )
    audit = InMemoryAuditSink(clock, producer="scheduler")
    interceptor = AuthInterceptor(Authenticator(tokens=TokenVerifier(store, clock, cache_seconds=0)), audit_sink=audit)
    server, port = await start_grpc_server(
        "127.0.0.1:0", register(TokenServicer(store, clock)), interceptors=[interceptor]
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Stack(auth_pb2_grpc.TokenServiceStub(channel), admin, clock, audit)
    await server.stop(None)


def auth(token: str) -> Any:
    return (("authorization", f"Bearer {token}"),)


def grant(account: str, role: int) -> auth_pb2.Grant:
    return auth_pb2.Grant(account_id=account, role=role)  # type: ignore[arg-type]


async def test_an_admin_mints_a_viewer_token_that_works_and_is_shown_once(stack: Stack) -> None:
    created = await stack.tokens.CreateToken(
        auth_pb2.CreateTokenRequest(name="dashboards", grants=[grant("acme", auth_pb2.ROLE_VIEWER)]),
        metadata=auth(stack.admin),
    )
    assert created.secret.startswith("srt_" + created.token.token_id + "_")
    me = await stack.tokens.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=auth(created.secret))
    assert me.subject == f"token:{created.token.token_id}"
    assert [(g.account_id, g.role) for g in me.grants] == [("acme", auth_pb2.ROLE_VIEWER)]
    listed = await stack.tokens.ListTokens(auth_pb2.ListTokensRequest(), metadata=auth(stack.admin))
    assert {t.name for t in listed.tokens} == {"first", "dashboards"}
    assert all(created.secret not in str(t) for t in listed.tokens)
    assert created.token.expires_at.ToDatetime(dt.UTC) == utc(2026, 12, 1) + dt.timedelta(days=90)


async def test_a_viewer_cannot_mint_and_nobody_grants_a_foreign_account(stack: Stack) -> None:
    viewer = await stack.tokens.CreateToken(
        auth_pb2.CreateTokenRequest(name="v", grants=[grant("acme", auth_pb2.ROLE_VIEWER)]),
        metadata=auth(stack.admin),
    )
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stack.tokens.CreateToken(
            auth_pb2.CreateTokenRequest(name="x", grants=[grant("acme", auth_pb2.ROLE_ADMIN)]),
            metadata=auth(viewer.secret),
        )
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await stack.tokens.CreateToken(
            auth_pb2.CreateTokenRequest(name="x", grants=[grant("globex", auth_pb2.ROLE_ADMIN)]),
            metadata=auth(stack.admin),
        )
    assert (foreign.value.code(), foreign.value.details()) == (grpc.StatusCode.NOT_FOUND, "account globex not found")


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (auth_pb2.CreateTokenRequest(name="", grants=[]), "printable name"),
        (auth_pb2.CreateTokenRequest(name="x", grants=[]), "at least one grant"),
        (auth_pb2.CreateTokenRequest(name="x", grants=[auth_pb2.Grant(account_id="acme")]), "role"),
        (
            auth_pb2.CreateTokenRequest(
                name="x", grants=[auth_pb2.Grant(account_id="acme", role=auth_pb2.ROLE_ADMIN)], ttl_seconds=10**9
            ),
            "at most 366 days",
        ),
    ],
)
async def test_bad_requests_are_invalid_arguments(stack: Stack, request_: Any, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.tokens.CreateToken(request_, metadata=auth(stack.admin))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


async def test_a_revoked_token_stops_working_and_foreign_ids_are_not_found(stack: Stack) -> None:
    created = await stack.tokens.CreateToken(
        auth_pb2.CreateTokenRequest(name="ci", grants=[grant("acme", auth_pb2.ROLE_OPERATOR)]),
        metadata=auth(stack.admin),
    )
    revoked = await stack.tokens.RevokeToken(
        auth_pb2.RevokeTokenRequest(token_id=created.token.token_id), metadata=auth(stack.admin)
    )
    assert revoked.HasField("revoked_at")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.tokens.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=auth(created.secret))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.tokens.RevokeToken(auth_pb2.RevokeTokenRequest(token_id="0" * 24), metadata=auth(stack.admin))
    assert (missing.value.code(), missing.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        f"API token {'0' * 24} not found",
    )


async def test_token_calls_are_audited_by_id_and_the_secret_never_is(stack: Stack) -> None:
    created = await stack.tokens.CreateToken(
        auth_pb2.CreateTokenRequest(name="ci", grants=[grant("acme", auth_pb2.ROLE_OPERATOR)]),
        metadata=auth(stack.admin),
    )
    await stack.tokens.RevokeToken(
        auth_pb2.RevokeTokenRequest(token_id=created.token.token_id), metadata=auth(stack.admin)
    )
    await stack.tokens.ListTokens(auth_pb2.ListTokensRequest(), metadata=auth(stack.admin))  # a read: not recorded
    create, revoke = stack.audit.events
    token_id = created.token.token_id
    assert create.method.endswith("/CreateToken") and dict(create.resources) == {"token_id": token_id}
    assert list(create.account_ids) == ["acme"] and create.result_code == "OK"
    assert revoke.method.endswith("/RevokeToken") and dict(revoke.resources) == {"token_id": token_id}
    parsed = parse_token(created.secret)
    assert parsed is not None
    secret_part = parsed[1]  # the whole secret part, which may itself contain "_"
    for event in stack.audit.events:
        assert secret_part.encode() not in event.SerializeToString()
