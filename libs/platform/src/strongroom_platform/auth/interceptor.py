"""The one server interceptor that authenticates every call and applies the policy table (ADR 0024).

For each call it finds the method's :class:`~strongroom_platform.auth.policy.Rule` (none: refused),
identifies the caller from the transport (a service's mTLS certificate) or the ``authorization``
metadata (API token, OIDC JWT, or an agent credential checked by the gateway's authenticator),
refuses what the rule does not admit, and runs the handler with the :class:`CallAuth` in a context
variable for :func:`~strongroom_platform.auth.principal.choose_account` and ``authorize``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509

from strongroom_platform import audit
from strongroom_platform.auth.oidc import OidcVerifier, looks_like_jwt
from strongroom_platform.auth.policy import Caller, Rule, rule_for
from strongroom_platform.auth.principal import ANONYMOUS, CallAuth, CallerKind, Principal, service, set_current_call
from strongroom_platform.auth.tokens import TOKEN_PREFIX, TokenVerifier
from strongroom_platform.errors import PermissionDenied, Unauthenticated
from strongroom_platform.grpc_errors import ServerInterceptor, status_for

log = logging.getLogger(__name__)

SERVICE_URI_PREFIX = "spiffe://strongroom/service/"


@dataclass(frozen=True, slots=True)
class AgentCall:
    """What an agent authenticator sees of a call: the method, the ``authorization`` value (None
    when absent) and the transport's auth context (``x509_pem_cert`` of a verified client
    certificate on a mutual-TLS listener)."""

    method: str
    bearer: str | None
    auth_context: Mapping[str, Iterable[bytes]]

    def peer_certificate_pem(self) -> bytes | None:
        """The verified peer certificate (PEM), or None (no client certificate on this listener)."""
        pems = list(self.auth_context.get("x509_pem_cert") or ())
        return bytes(pems[0]) if pems else None


AgentAuthenticator = Callable[[AgentCall], Awaitable[Principal]]
"""Checks an agent's call (its certificate or bearer, per listener) and returns its principal."""


def bearer_of(metadata: Any) -> str | None:
    """The value of the ``authorization`` metadata entry, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
    return None


def service_name_of(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The service name in a verified peer certificate's ``spiffe://strongroom/service/<name>`` URI SAN.

    gRPC fills ``x509_pem_cert`` only after verifying the chain against the listener's client CA,
    so the certificate here is one our CA issued.
    """
    pems = list(auth_context.get("x509_pem_cert") or ())
    if not pems:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(SERVICE_URI_PREFIX):
            name = uri[len(SERVICE_URI_PREFIX) :]
            if name.isidentifier():
                return name
    return None


class Authenticator:
    """Turns a call's transport identity and metadata into a :class:`Principal` under a rule."""

    def __init__(
        self,
        *,
        tokens: TokenVerifier | None,
        oidc: OidcVerifier | None = None,
        agents: AgentAuthenticator | None = None,
    ) -> None:
        self._tokens = tokens
        self._oidc = oidc
        self._agents = agents

    async def principal(self, rule: Rule, context: grpc.aio.ServicerContext[Any, Any], method: str = "") -> Principal:
        """The caller, admitted by ``rule``; raises ``Unauthenticated`` or ``PermissionDenied`` otherwise."""
        if Caller.PUBLIC in rule.callers:
            return ANONYMOUS
        if Caller.SERVICE in rule.callers:
            name = service_name_of(context.auth_context())
            if name is not None:
                if name in rule.services:
                    return service(name)
                raise PermissionDenied(f"service {name} may not {rule.verb}")
        bearer = bearer_of(context.invocation_metadata())
        if Caller.AGENT in rule.callers:
            if self._agents is None:
                raise PermissionDenied("agents are not served on this listener")
            return await self._agents(AgentCall(method, bearer, context.auth_context()))
        if Caller.OPERATOR in rule.callers:
            return await self._operator(bearer, rule)
        raise PermissionDenied(f"only Strongroom services may {rule.verb}")

    async def _operator(self, bearer: str | None, rule: Rule) -> Principal:
        if not bearer:
            raise Unauthenticated("this call needs a credential: authorization: Bearer <API token or OIDC token>")
        scheme, _, credential = bearer.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("the authorization header must be 'Bearer <token>'")
        credential = credential.strip()
        if credential.startswith(TOKEN_PREFIX) and self._tokens is not None:
            principal = await self._tokens.verify(credential)
        elif looks_like_jwt(credential) and self._oidc is not None:
            principal = await self._oidc.verify(credential)
        else:
            raise Unauthenticated("invalid credential")
        return principal


Behavior = Callable[..., Any]


class AuthInterceptor(ServerInterceptor):
    """Authenticates and authorizes every call of the server it is installed on.

    Install it through ``runtime.start_grpc_server(..., interceptors=[...])``: refusals are raised
    as service errors, which the error mapping installed there turns into status codes.

    Calls of ``mutating`` rules are audited (ADR 0027) through ``audit_sink``: without one, such a call
    is refused (a server that cannot keep the trail must not change state).
    """

    def __init__(self, authenticator: Authenticator, *, audit_sink: audit.AuditSink | None = None) -> None:
        self._authenticator = authenticator
        self._audit = audit_sink

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        rule = rule_for(method)
        wrap = self._wrap_stream if _streams_response(handler) else self._wrap_unary
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary, method, rule), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                wrap(handler.unary_stream, method, rule), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                wrap(handler.stream_unary, method, rule), handler.request_deserializer, handler.response_serializer
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            wrap(handler.stream_stream, method, rule), handler.request_deserializer, handler.response_serializer
        )

    async def _admit(self, method: str, rule: Rule | None, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if rule is None:
            log.error("refused %s: the method has no rule in strongroom_platform.auth.policy", method)
            raise PermissionDenied(f"{method} is not open to any caller")
        principal = await self._authenticator.principal(rule, context, method)
        if principal.kind is CallerKind.ANONYMOUS and Caller.PUBLIC not in rule.callers:
            raise Unauthenticated("this call needs a credential")
        call = CallAuth(principal=principal, method=method, permission=rule.permission, verb=rule.verb)
        set_current_call(call)
        audited = audit.current()
        if audited is not None:
            # From here on the call has a "who": its refusals and failures are recorded.
            audited.call = call
        if (
            principal.kind is CallerKind.OPERATOR
            and rule.permission is not None
            and not principal.may_ever(rule.permission)
        ):
            raise PermissionDenied(f"this credential's roles cannot {rule.verb}")

    def _wrap_unary(self, behavior: Behavior, method: str, rule: Rule | None) -> Behavior:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if rule is not None and rule.mutating:
                return await self._audited(behavior, request, context, method, rule)
            await self._admit(method, rule, context)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result

        return guarded

    async def _audited(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: str, rule: Rule
    ) -> Any:
        """Run a mutating call so that it leaves exactly its audit record(s) (see ``audit``)."""
        if self._audit is None:
            log.error("refused %s: it changes state and this server has no audit sink", method)
            raise PermissionDenied(f"{method} changes state and this server keeps no audit trail")
        call_audit, token = audit.begin(self._audit, method, rule.verb, request)
        try:
            try:
                await self._admit(method, rule, context)
                result = behavior(request, context)
                result = await result if inspect.isawaitable(result) else result
            except Exception as exc:
                # Anonymous and bad-credential calls have no "who" (call is None): anyone can make
                # them, so they are logged by the error mapping, not recorded.
                if call_audit.call is not None:
                    code, message = status_for(exc)
                    await self._record_failure(call_audit, code.name, message)
                raise
            if call_audit.recorded == 0:
                # Nothing committed an effect (a no-op, or an in-memory store): the answer is OK only
                # once its record is committed.
                await self._audit.record(call_audit.event(audit.OK, ""))
            return result
        finally:
            audit.end(token)

    async def _record_failure(self, call_audit: audit.CallAudit, code: str, message: str) -> None:
        assert self._audit is not None
        try:
            await self._audit.record(call_audit.event(code, message))
        except Exception:
            # The caller gets the call's own error; nothing of it was committed.
            log.exception("could not record the failure of %s in the audit trail", call_audit.method)

    def _wrap_stream(self, behavior: Behavior, method: str, rule: Rule | None) -> Behavior:
        if not inspect.isasyncgenfunction(behavior):
            return self._wrap_unary(behavior, method, rule)

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await self._admit(method, rule, context)
            async for response in behavior(request, context):
                yield response

        return guarded


def _streams_response(handler: grpc.RpcMethodHandler[Any, Any]) -> bool:
    return bool(handler.response_streaming)
