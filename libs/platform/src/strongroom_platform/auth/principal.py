"""Who is calling, what their roles grant, and the account checks every handler makes (ADR 0024).

A :class:`Principal` is the authenticated caller: an operator (API token or OIDC subject) holding a
role per account, a Strongroom service (acting for every account), or an agent (one instance of one
account). The interceptor puts the caller and the rule of the method being called into a context
variable (:func:`current_call`); handlers then use :func:`choose_account` and :func:`authorize`, so
the account a call acts on always comes from the credential, never from the request alone.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Refusals are the platform's service errors, so the one error mapping (``grpc_errors``) turns them
# into their status codes wherever they are raised: in the interceptor or in a handler.
from strongroom_platform import audit
from strongroom_platform.errors import InvalidArgument, NotFound, PermissionDenied


class Permission(enum.IntEnum):
    """What a call needs, ordered: a role that grants one grants every lower one."""

    READ = 1
    OPERATE = 2
    ADMIN = 3


class Role(enum.Enum):
    """A principal's role on one account."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def grants(self) -> Permission:
        """The highest permission this role grants."""
        return _ROLE_GRANTS[self]

    @classmethod
    def parse(cls, raw: str) -> Role:
        """``viewer``, ``operator`` or ``admin`` (any case); ValueError otherwise."""
        try:
            return cls(raw.strip().lower())
        except ValueError:
            raise ValueError(f"unknown role {raw!r}: use viewer, operator or admin") from None


_ROLE_GRANTS = {Role.VIEWER: Permission.READ, Role.OPERATOR: Permission.OPERATE, Role.ADMIN: Permission.ADMIN}


class CallerKind(enum.Enum):
    OPERATOR = "operator"
    SERVICE = "service"
    AGENT = "agent"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``subject`` names it for the audit trail (``token:<id>``, ``oidc:<iss>#<sub>``,
    ``service:<name>``, ``agent:<instance>``). ``roles`` is account → role for operators;
    services act for every account; an agent acts for ``agent_account`` only.
    """

    kind: CallerKind
    subject: str
    roles: Mapping[str, Role] = field(default_factory=lambda: MappingProxyType({}))
    service: str = ""
    agent_account: str = ""
    agent_instance: str = ""

    def permission_on(self, account_id: str) -> Permission | None:
        """The highest permission this caller has on ``account_id``, or None."""
        if self.kind is CallerKind.SERVICE:
            return Permission.ADMIN
        if self.kind is CallerKind.AGENT:
            return Permission.OPERATE if account_id == self.agent_account else None
        role = self.roles.get(account_id)
        return role.grants if role is not None else None

    def accounts_with(self, permission: Permission) -> list[str]:
        """The accounts on which this operator has at least ``permission``, sorted."""
        return sorted(a for a, r in self.roles.items() if r.grants >= permission)

    def may_ever(self, permission: Permission) -> bool:
        """Whether some account grants ``permission`` (the interceptor's early check)."""
        if self.kind in (CallerKind.SERVICE, CallerKind.AGENT):
            return True
        return any(r.grants >= permission for r in self.roles.values())


ANONYMOUS = Principal(kind=CallerKind.ANONYMOUS, subject="anonymous")


def operator(subject: str, roles: Mapping[str, Role]) -> Principal:
    return Principal(kind=CallerKind.OPERATOR, subject=subject, roles=MappingProxyType(dict(roles)))


def service(name: str) -> Principal:
    return Principal(kind=CallerKind.SERVICE, subject=f"service:{name}", service=name)


def agent(account_id: str, instance_id: str) -> Principal:
    return Principal(
        kind=CallerKind.AGENT, subject=f"agent:{instance_id}", agent_account=account_id, agent_instance=instance_id
    )


@dataclass(frozen=True, slots=True)
class CallAuth:
    """The caller of the RPC being handled and the permission its rule requires."""

    principal: Principal
    method: str
    permission: Permission | None
    verb: str


_CURRENT: contextvars.ContextVar[CallAuth | None] = contextvars.ContextVar("strongroom_call_auth", default=None)


def current_call() -> CallAuth:
    """The :class:`CallAuth` of the RPC being handled; raises when no interceptor set one.

    Failing here (instead of assuming a superuser) keeps a servicer that was served without the
    interceptor closed.
    """
    call = _CURRENT.get()
    if call is None:
        raise PermissionDenied("this call was not authenticated (the server is missing its auth interceptor)")
    return call


def peek_call() -> CallAuth | None:
    """The :class:`CallAuth` of the RPC being handled, or None outside the interceptor."""
    return _CURRENT.get()


def set_current_call(call: CallAuth | None) -> contextvars.Token[CallAuth | None]:
    return _CURRENT.set(call)


def reset_current_call(token: contextvars.Token[CallAuth | None]) -> None:
    _CURRENT.reset(token)


def choose_account(requested: str, *, call: CallAuth | None = None) -> str:
    """The account a call acts on: ``requested`` if the caller may act on it, else a refusal.

    An empty ``requested`` means the caller's only account (an operator holding several must
    choose). An account the caller does not hold is ``NotFound`` (no oracle: the same answer as an
    account that does not exist); one it holds with too weak a role is ``PermissionDenied``.
    """
    call = call or current_call()
    principal = call.principal
    needed = call.permission or Permission.READ
    if not requested:
        if principal.kind is CallerKind.AGENT:
            return principal.agent_account
        if principal.kind is CallerKind.SERVICE:
            raise InvalidArgument("account_id is required")
        candidates = sorted(principal.roles)
        if len(candidates) == 1:
            requested = candidates[0]
        elif not candidates:
            raise PermissionDenied("this credential holds no account")
        else:
            raise InvalidArgument(
                f"this credential holds several accounts ({', '.join(candidates)}); choose one with account_id"
            )
    _check(principal, requested, needed, call.verb, lambda: NotFound(f"account {requested} not found"))
    return requested


def visible_accounts(*, call: CallAuth | None = None) -> list[str] | None:
    """The accounts on which the caller may perform the current call, sorted; None means every account.

    For queries keyed by something other than an account (the versions of an instance id, say):
    filter by these accounts, so a resource of another account lists like one that does not exist.
    A service acts for every account (None); an agent for its own.
    """
    call = call or current_call()
    principal = call.principal
    if principal.kind is CallerKind.SERVICE:
        return None
    if principal.kind is CallerKind.AGENT:
        return [principal.agent_account]
    return principal.accounts_with(call.permission or Permission.READ)


def authorize(account_id: str, not_found: Callable[[], Exception], *, call: CallAuth | None = None) -> None:
    """Refuse unless the caller may perform the current call on a resource of ``account_id``.

    ``not_found`` builds the exception the handler raises for an unknown id of that kind, so a
    foreign resource is indistinguishable from a missing one.
    """
    call = call or current_call()
    _check(call.principal, account_id, call.permission or Permission.READ, call.verb, not_found)


def _check(
    principal: Principal, account_id: str, needed: Permission, verb: str, not_found: Callable[[], Exception]
) -> None:
    # The account a mutating call acts on, or tries to, is part of its audit record (ADR 0027).
    audit.note_account(account_id)
    have = principal.permission_on(account_id)
    if have is None:
        raise not_found()
    if have < needed:
        role = principal.roles.get(account_id)
        role_name = role.value if role is not None else principal.kind.value
        raise PermissionDenied(f"role {role_name} on account {account_id} cannot {verb}")
