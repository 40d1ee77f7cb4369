"""Authentication and authorization shared by every service (ADR 0024).

``policy.POLICY`` says what each RPC needs; ``AuthInterceptor`` enforces it on every listener;
handlers scope their work with ``choose_account`` and ``authorize``.
"""

from strongroom_platform.auth.interceptor import AgentAuthenticator, AgentCall, Authenticator, AuthInterceptor
from strongroom_platform.auth.policy import POLICY, Caller, Rule, rule_for
from strongroom_platform.auth.principal import (
    CallAuth,
    CallerKind,
    Permission,
    Principal,
    Role,
    agent,
    authorize,
    choose_account,
    current_call,
    operator,
    service,
    visible_accounts,
)
from strongroom_platform.auth.tokens import InMemoryTokenStore, TokenRecord, TokenStore, TokenVerifier, new_token
from strongroom_platform.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated

__all__ = [
    "POLICY",
    "AgentAuthenticator",
    "AgentCall",
    "AuthInterceptor",
    "Authenticator",
    "CallAuth",
    "Caller",
    "CallerKind",
    "InMemoryTokenStore",
    "InvalidArgument",
    "NotFound",
    "Permission",
    "PermissionDenied",
    "Principal",
    "Role",
    "Rule",
    "TokenRecord",
    "TokenStore",
    "TokenVerifier",
    "Unauthenticated",
    "agent",
    "authorize",
    "choose_account",
    "current_call",
    "new_token",
    "operator",
    "rule_for",
    "service",
    "visible_accounts",
]
