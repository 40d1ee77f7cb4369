"""``strongroom.auth.v1.TokenService``: create, list and revoke API tokens (ADR 0024).

The logic is in plain functions over a :class:`TokenStore`; :class:`TokenServicer` only converts
messages. The scheduler serves it; any process with the store could.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from strongroom.auth.v1 import auth_pb2, auth_pb2_grpc

from strongroom_platform import audit, paging
from strongroom_platform.auth.principal import CallAuth, CallerKind, Permission, Role, choose_account, current_call
from strongroom_platform.auth.tokens import MAX_TOKEN_LIFETIME, TokenRecord, TokenStore, new_token
from strongroom_platform.clock import Clock
from strongroom_platform.errors import InvalidArgument, NotFound, PermissionDenied

DEFAULT_LIFETIME = dt.timedelta(days=90)
MAX_LIST_PAGE = 1000  # also the default: a caller from before pages saw every token
_ROLE_TO_PROTO = {
    Role.VIEWER: auth_pb2.ROLE_VIEWER,
    Role.OPERATOR: auth_pb2.ROLE_OPERATOR,
    Role.ADMIN: auth_pb2.ROLE_ADMIN,
}
_PROTO_TO_ROLE = {v: k for k, v in _ROLE_TO_PROTO.items()}


def _no_token(token_id: str) -> Callable[[], Exception]:
    return lambda: NotFound(f"API token {token_id} not found")


async def create_token(
    name: str,
    grants: dict[str, Role],
    lifetime: dt.timedelta,
    *,
    store: TokenStore,
    clock: Clock,
    call: CallAuth | None = None,
) -> tuple[str, TokenRecord]:
    """Issue a token; the caller must be an admin of every account it grants."""
    call = call or current_call()
    if not name or len(name) > 200 or not name.isprintable():
        raise InvalidArgument("a token needs a printable name of 1 to 200 characters")
    if not grants:
        raise InvalidArgument("a token needs at least one grant (account and role)")
    if lifetime > MAX_TOKEN_LIFETIME:
        raise InvalidArgument(f"a token lives at most {MAX_TOKEN_LIFETIME.days} days")
    for account in grants:
        choose_account(account, call=call)
    return await _issue(name, grants, lifetime, created_by=call.principal.subject, store=store, clock=clock)


async def _issue(
    name: str, grants: dict[str, Role], lifetime: dt.timedelta, *, created_by: str, store: TokenStore, clock: Clock
) -> tuple[str, TokenRecord]:
    token, record = new_token(name=name, grants=grants, created_by=created_by, now=clock.now(), lifetime=lifetime)
    audit.note(token_id=record.token_id)  # the id only: the secret never reaches the audit trail
    await store.insert(record)
    return token, record


async def bootstrap_token(
    account: str | list[str], role: Role, *, name: str, lifetime: dt.timedelta, store: TokenStore, clock: Clock
) -> str:
    """The first token of a deployment (``role`` on one account or several), made with database
    access rather than a credential."""
    accounts = [account] if isinstance(account, str) else account
    if not accounts or not all(accounts):
        raise InvalidArgument("an account is required")
    grants = dict.fromkeys(accounts, role)
    token, _ = await _issue(name, grants, lifetime, created_by="bootstrap", store=store, clock=clock)
    return token


async def list_tokens(
    account: str, *, page_size: int = 0, page_token: str = "", store: TokenStore, call: CallAuth | None = None
) -> tuple[list[TokenRecord], str]:
    """One page of the account's tokens, newest first, and the next page's token ("" on the last)."""
    size = paging.page_size(page_size, MAX_LIST_PAGE, MAX_LIST_PAGE)
    after = paging.token_position(page_token)
    found = await store.list(choose_account(account, call=call), after=after, limit=size + 1)
    return paging.keyset_page(found, size, lambda r: (r.created_at, r.token_id))


async def revoke_token(token_id: str, *, store: TokenStore, clock: Clock, call: CallAuth | None = None) -> TokenRecord:
    """Revoke; an admin of any account the token holds may (revoking only ever removes access)."""
    call = call or current_call()
    record = await store.get(token_id)
    seen = [p for a in (record.grants if record else ()) if (p := call.principal.permission_on(a)) is not None]
    if record is None or not seen:
        raise _no_token(token_id)()
    for account in sorted(record.grants):  # every account the token works on is affected
        audit.note_account(account)
    if max(seen) < Permission.ADMIN:
        raise PermissionDenied(f"only an admin of one of its accounts can {call.verb}")
    revoked = await store.revoke(token_id, clock.now())
    if revoked is None:
        raise _no_token(token_id)()
    return revoked


def _timestamp(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def token_message(record: TokenRecord) -> auth_pb2.ApiToken:
    message = auth_pb2.ApiToken(
        token_id=record.token_id,
        name=record.name,
        grants=[auth_pb2.Grant(account_id=a, role=_ROLE_TO_PROTO[r]) for a, r in sorted(record.grants.items())],
        created_by=record.created_by,
        created_at=_timestamp(record.created_at),
        expires_at=_timestamp(record.expires_at),
    )
    if record.revoked_at is not None:
        message.revoked_at.CopyFrom(_timestamp(record.revoked_at))
    return message


def grants_from(grants: Any) -> dict[str, Role]:
    result: dict[str, Role] = {}
    for grant in grants:
        role = _PROTO_TO_ROLE.get(grant.role)
        if not grant.account_id or role is None:
            raise InvalidArgument("every grant needs an account_id and a role (viewer, operator or admin)")
        if grant.account_id in result:
            raise InvalidArgument(f"account {grant.account_id} is granted twice")
        result[grant.account_id] = role
    return result


class TokenServicer(auth_pb2_grpc.TokenServiceServicer):
    """Thin adapter: messages in, the functions above, messages out."""

    def __init__(self, store: TokenStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def CreateToken(  # noqa: N802 (gRPC method name)
        self, request: auth_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.CreateTokenResponse:
        lifetime = dt.timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else DEFAULT_LIFETIME
        secret, record = await create_token(
            request.name, grants_from(request.grants), lifetime, store=self._store, clock=self._clock
        )
        return auth_pb2.CreateTokenResponse(token=token_message(record), secret=secret)

    async def ListTokens(  # noqa: N802
        self, request: auth_pb2.ListTokensRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.ListTokensResponse:
        records, next_page = await list_tokens(
            request.account_id, page_size=request.page_size, page_token=request.page_token, store=self._store
        )
        return auth_pb2.ListTokensResponse(tokens=[token_message(r) for r in records], next_page_token=next_page)

    async def RevokeToken(  # noqa: N802
        self, request: auth_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.ApiToken:
        return token_message(await revoke_token(request.token_id, store=self._store, clock=self._clock))

    async def WhoAmI(  # noqa: N802
        self, request: auth_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.WhoAmIResponse:
        principal = current_call().principal
        grants = [auth_pb2.Grant(account_id=a, role=_ROLE_TO_PROTO[r]) for a, r in sorted(principal.roles.items())]
        if principal.kind is not CallerKind.OPERATOR:
            grants = []
        return auth_pb2.WhoAmIResponse(subject=principal.subject, grants=grants)


def register(servicer: TokenServicer) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_TokenServiceServicer_to_server(servicer, server)

    return add
