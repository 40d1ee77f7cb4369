"""Composition root of the agent gateway: pool, migrations, outbox relay, consumer, pack writer, gRPC."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from contextlib import AsyncExitStack

import grpc
from strongroom_platform import audit, lifecycle, serving, wiring
from strongroom_platform.auth import Authenticator, AuthInterceptor
from strongroom_platform.certs import load_ca_files
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.eventbus import ConsumerFactory, EventPublisher
from strongroom_platform.objectstore import ObjectStore
from strongroom_platform.runtime import start_grpc_server
from strongroom_platform.settings import SettingsError
from strongroom_platform.tls import server_credentials

from strongroom_gateway import agent_certs, consumers, manifest_api
from strongroom_gateway.agent_certs import CertificateIssuer
from strongroom_gateway.grpc_api import AgentAdminServicer, GatewayServicer, register, register_admin
from strongroom_gateway.ingest import PackWriter
from strongroom_gateway.keys import AccountKeys, MasterKeyring
from strongroom_gateway.migrations import SCHEMA, SPEC
from strongroom_gateway.ports import GatewayStore
from strongroom_gateway.repository import PgGatewayStore
from strongroom_gateway.sessions import SessionRegistry
from strongroom_gateway.settings import Settings

log = logging.getLogger(__name__)


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    clock: Clock | None = None,
    object_store: ObjectStore | None = None,
    publisher: EventPublisher | None = None,
    consumer_factory: ConsumerFactory | None = None,
    store: GatewayStore | None = None,
    keyring: MasterKeyring | None = None,
    audit_sink: audit.AuditSink | None = None,
) -> None:
    """Serve until ``stop`` is set, then shut down in reverse order.

    Prints ``LISTENING gateway <host>:<port>`` on stdout once the gRPC API
    serves. Dependencies left as None are built from ``settings``; with an
    injected ``store`` no database is opened and no outbox relay runs (the
    fake store keeps its outbox in memory). The master keyring comes from
    ``settings.master_key`` unless injected; without either the gateway refuses
    to start (it never stores backup data unencrypted).
    """
    clock = clock or SystemClock()
    if keyring is None:
        if settings.master_key is None:
            raise SettingsError("no master key configured (STRONGROOM_MASTER_KEY or STRONGROOM_MASTER_KEY_FILE)")
        # Before any connection: a missing or unreadable key fails the start at once.
        keyring = await asyncio.to_thread(MasterKeyring.load, settings.master_key)
    log.info("encrypting with master key id %s", keyring.current.key_id)
    async with AsyncExitStack() as stack:
        platform = settings.platform
        if store is None:
            pool = await lifecycle.open_pool(stack, platform, SPEC)
            store = PgGatewayStore(pool)
            # agent revocations by an admin are audited in the gateway's outbox (ADR 0027)
            audit_sink = audit_sink or audit.OutboxAuditSink(pool, SCHEMA, clock)
            if publisher is None:
                publisher = await stack.enter_async_context(wiring.publisher(platform))
            await lifecycle.start_relay(stack, pool, SCHEMA, publisher, clock, replay=platform.outbox_replay)
        if object_store is None:
            object_store = await stack.enter_async_context(wiring.object_store(platform, clock))
        if consumer_factory is None:
            consumer_factory = wiring.consumer_factory(platform)

        sessions = SessionRegistry()
        keys = AccountKeys(store, keyring, clock)
        writer = PackWriter(
            store,
            object_store,
            clock,
            keys=keys,
            target_bytes=settings.pack_target_bytes,
            max_concurrent_writes=settings.max_concurrent_writes,
        )
        stack.push_async_callback(writer.close)

        handlers = consumers.record_handlers(store, clock, sessions)
        await lifecycle.start_consumer(stack, consumer_factory, consumers.GROUP_ID, handlers)

        issuer = await asyncio.to_thread(_issuer, settings, clock)
        servicer = GatewayServicer(
            store=store,
            object_store=object_store,
            clock=clock,
            sessions=sessions,
            writer=writer,
            job_poll_interval=settings.job_poll_interval,
            unthrottled=settings.unthrottled,
            issuer=issuer,
        )
        # The internal ManifestService (decrypted manifests, for the catalog only) is served on the
        # internal listener, to callers with a service certificate; never on the agents' port
        # (ADR 0016, 0024).
        manifests = manifest_api.register(
            manifest_api.ManifestServicer(store=store, object_store=object_store, keys=keys)
        )
        admin = register_admin(AgentAdminServicer(store=store, clock=clock, sessions=sessions))

        def internal(server: grpc.aio.Server) -> None:
            manifests(server)
            admin(server)

        internal_listen = settings.internal_listen or platform.internal_listen
        if not internal_listen:
            log.warning("no internal listener (STRONGROOM_GATEWAY_INTERNAL_LISTEN): the catalog cannot index points")
        if issuer is not None:
            await _serve_agent_mtls(stack, settings, servicer, issuer, store, clock)
        # The gateway serves agents (their credential) and services (their certificate), no operator.
        bearer = agent_certs.bearer_authenticator(store, data_calls=settings.agent_bearer_data_calls)
        auth = serving.agents_only(bearer, audit_sink=audit_sink)
        await serving.serve_listeners(
            stack,
            "gateway",
            platform,
            settings.grpc_listen,
            register(servicer),
            auth=auth,
            internal_listen=internal_listen,
            internal_register=internal,
        )
        await stop.wait()
        log.info("gateway stopping")


def _issuer(settings: Settings, clock: Clock) -> CertificateIssuer | None:
    """The agent CA from its files, or None when agent certificates are not configured."""
    if settings.agent_ca_cert is None or settings.agent_ca_key is None:
        log.warning("no agent CA (STRONGROOM_GATEWAY_AGENT_CA_CERT): agents authenticate by bearer only")
        return None
    ca = load_ca_files(settings.agent_ca_cert, settings.agent_ca_key)
    bundle = settings.agent_trust_bundle.read_bytes() if settings.agent_trust_bundle is not None else b""
    return CertificateIssuer(ca, clock, validity=settings.agent_cert_validity, gateway_ca_pem=bundle)


async def _serve_agent_mtls(
    stack: AsyncExitStack,
    settings: Settings,
    servicer: GatewayServicer,
    issuer: CertificateIssuer,
    store: GatewayStore,
    clock: Clock,
) -> None:
    """The agent mTLS listener: client certificates of the agent CA required, checked per call.

    Announced as ``LISTENING gateway-agents <addr>`` before the public listener, which then tells
    enrolling agents where it is.
    """
    tls = settings.platform.tls
    listen = settings.agent_mtls_listen
    if tls is None or not tls.has_identity or listen is None:
        raise SettingsError("the agent mTLS listener needs the gateway's certificate (STRONGROOM_TLS_CERT/KEY)")
    credentials = server_credentials(dataclasses.replace(tls, client_ca_file=settings.agent_ca_cert))
    interceptor = AuthInterceptor(
        Authenticator(tokens=None, agents=agent_certs.certificate_authenticator(store, clock))
    )
    server, port = await start_grpc_server(
        listen, register(servicer), credentials=credentials, interceptors=[interceptor]
    )
    stack.push_async_callback(server.stop, 5)
    host = listen.rsplit(":", 1)[0]
    print(f"LISTENING gateway-agents {host}:{port}", flush=True)
    issuer.mtls_address = settings.agent_mtls_address or f":{port}"
    log.info("agent mTLS listener on %s:%d (agents are told %s)", host, port, issuer.mtls_address)
