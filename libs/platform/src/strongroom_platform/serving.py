"""A service's gRPC listeners behind the one auth interceptor (ADRs 0023, 0024).

Every service serves:
- its **public listener** (``STRONGROOM_GRPC_LISTEN``): server TLS only; operators present a bearer
  credential (API token or OIDC JWT), agents theirs on the gateway's port;
- optionally its **internal listener** (``STRONGROOM_INTERNAL_LISTEN``): mutual TLS against the
  service CA (``STRONGROOM_TLS_CLIENT_CA``), where other Strongroom services call it with their
  service certificates. gRPC Python cannot ask for an optional client certificate, so the two
  kinds of caller get two ports; NetworkPolicies keep the internal one inside the cluster.

Both run the same :class:`~strongroom_platform.auth.AuthInterceptor`: on the public port no service
identity can appear, and on the internal port no caller without a service certificate gets in.
Without TLS settings a listener is refused unless ``STRONGROOM_INSECURE_PLAINTEXT=1``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc

from strongroom_platform import audit, lifecycle
from strongroom_platform.auth import AgentAuthenticator, Authenticator, AuthInterceptor, TokenVerifier
from strongroom_platform.auth.oidc import OidcVerifier
from strongroom_platform.auth.tokens_pg import AUTH_SPEC, PgTokenStore
from strongroom_platform.clock import Clock
from strongroom_platform.settings import PlatformSettings, SettingsError, TlsSettings
from strongroom_platform.tls import listener_credentials, secure_channel, server_credentials

__all__ = ["Auth", "agents_only", "open_auth", "peer_channel", "serve_listeners"]

Register = Callable[[grpc.aio.Server], None]


@dataclass(frozen=True, slots=True)
class Auth:
    """What a process authenticates with: the interceptor, and the token store behind it."""

    interceptor: AuthInterceptor
    tokens: PgTokenStore


def agents_only(agents: AgentAuthenticator, *, audit_sink: audit.AuditSink | None = None) -> AuthInterceptor:
    """The interceptor of a process that serves no operator (the gateway): agents and services only.

    Its mutating calls (an admin revoking agent certificates) are audited through ``audit_sink``.
    """
    return AuthInterceptor(Authenticator(tokens=None, agents=agents), audit_sink=audit_sink)


async def open_auth(
    stack: AsyncExitStack,
    settings: PlatformSettings,
    clock: Clock,
    *,
    agents: AgentAuthenticator | None = None,
    audit_sink: audit.AuditSink | None = None,
) -> Auth:
    """The auth interceptor of a process serving operators: API tokens from ``auth.api_tokens``,
    OIDC if configured.

    A process serving mutating calls passes its ``audit_sink`` (``audit.OutboxAuditSink`` over its
    own pool, ADR 0027); without one the interceptor refuses them.

    Opens a small pool on schema ``auth`` as the service's role (``lifecycle.open_pool``: migrated
    first when the process holds the migration owner's DSN).
    """
    pool = await lifecycle.open_pool(stack, settings, AUTH_SPEC, max_size=2)
    tokens = PgTokenStore(pool)
    oidc = OidcVerifier(settings.oidc, clock) if settings.oidc is not None else None
    authenticator = Authenticator(tokens=TokenVerifier(tokens, clock), oidc=oidc, agents=agents)
    return Auth(AuthInterceptor(authenticator, audit_sink=audit_sink), tokens)


def _public_tls(tls: TlsSettings | None) -> TlsSettings | None:
    # Operators hold no client certificate: the public port never asks for one.
    return dataclasses.replace(tls, client_ca_file=None) if tls is not None else None


def _internal_credentials(settings: PlatformSettings, service: str) -> grpc.ServerCredentials | None:
    tls = settings.tls
    if tls is not None and tls.has_identity:
        if tls.client_ca_file is None:
            raise SettingsError(
                f"{service}: STRONGROOM_INTERNAL_LISTEN needs STRONGROOM_TLS_CLIENT_CA (the service CA)"
            )
        return server_credentials(tls)
    return listener_credentials(tls, insecure_plaintext=settings.insecure_plaintext, listener=f"{service} internal")


async def serve_listeners(
    stack: AsyncExitStack,
    service: str,
    settings: PlatformSettings,
    listen: str,
    register: Register,
    *,
    auth: AuthInterceptor,
    internal_listen: str | None = None,
    internal_register: Register | None = None,
) -> grpc.aio.Server:
    """Serve ``register`` on the public listener and, if configured, the internal one.

    Announces ``LISTENING <service> <addr>`` and ``LISTENING <service>-internal <addr>``. The
    internal listener serves ``internal_register`` (default: the same services); it listens on
    ``internal_listen`` or else ``settings.internal_listen``. With ``settings.health_listen`` a
    plaintext health-only listener reports the public listener's health (kubelet probes; ADR 0044).
    """
    internal_listen = internal_listen or settings.internal_listen
    if internal_listen:
        await lifecycle.serve(
            stack,
            f"{service}-internal",
            internal_listen,
            internal_register or register,
            credentials=_internal_credentials(settings, service),
            interceptors=[auth],
        )
    credentials = listener_credentials(
        _public_tls(settings.tls), insecure_plaintext=settings.insecure_plaintext, listener=f"{service} gRPC"
    )
    server = await lifecycle.serve(stack, service, listen, register, credentials=credentials, interceptors=[auth])
    if settings.health_listen:
        await lifecycle.serve_health(stack, service, settings.health_listen, server)
    return server


def peer_channel(settings: PlatformSettings, address: str) -> grpc.aio.Channel:
    """A channel to another service's internal listener, presenting this service's certificate."""
    return secure_channel(address, settings.tls, insecure_plaintext=settings.insecure_plaintext)
