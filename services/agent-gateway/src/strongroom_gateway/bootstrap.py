"""Composition root of the agent gateway: pool, migrations, outbox relay, consumer, pack writer, gRPC."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import uuid
from contextlib import AsyncExitStack

import grpc
from strongroom_platform import audit, lifecycle, serving, wiring
from strongroom_platform.auth import Authenticator, AuthInterceptor
from strongroom_platform.certs import load_ca_files
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.eventbus import ConsumerFactory, EventPublisher
from strongroom_platform.objectstore import ObjectStore
from strongroom_platform.objectstore_s3 import S3ObjectStore
from strongroom_platform.runtime import start_grpc_server
from strongroom_platform.settings import SettingsError
from strongroom_platform.tls import server_credentials

from strongroom_gateway import agent_certs, consumers, held_skips, manifest_api, session_events
from strongroom_gateway.admission import BackupSlots
from strongroom_gateway.agent_certs import CertificateIssuer
from strongroom_gateway.gc import collector
from strongroom_gateway.grpc_api import AgentAdminServicer, GatewayServicer, register, register_admin
from strongroom_gateway.ingest import PackWriter
from strongroom_gateway.keys import AccountKeys, MasterKeyring
from strongroom_gateway.migrations import SCHEMA, SPEC
from strongroom_gateway.ports import GatewayStore
from strongroom_gateway.repository import PgGatewayStore
from strongroom_gateway.sessions import SessionRegistry
from strongroom_gateway.settings import Settings
from strongroom_gateway.vault import Vault
from strongroom_gateway.verify import engine as verify_engine
from strongroom_gateway.verify import grpc_api as verify_api
from strongroom_gateway.verify.ports import VerifyStore
from strongroom_gateway.verify.rate import ReadRate
from strongroom_gateway.verify.repository import PgVerifyStore
from strongroom_gateway.verify.worker import VerifyWorker

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
    verify_store: VerifyStore | None = None,
    reclaimer: ObjectStore | None = None,
) -> None:
    """Serve until ``stop`` is set, then shut down in reverse order.

    Prints ``LISTENING gateway <host>:<port>`` on stdout once the gRPC API
    serves. Dependencies left as None are built from ``settings``; with an
    injected ``store`` no database is opened and no outbox relay runs (the
    fake store keeps its outbox in memory). The master keyring comes from
    ``settings.master_key`` unless injected; without either the gateway refuses
    to start (it never stores backup data unencrypted).

    With a database (or an injected ``verify_store``) the gateway also runs verifications (ADR
    0033) and serves the operators' VerifyService on its public listener, where operator
    credentials are then checked as in the other services.

    Garbage collection (ADR 0041) runs every ``settings.gc_interval_seconds`` and deletes through
    ``reclaimer`` (default: the reclaimer identity on S3, the same store on the filesystem).
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
        pool = None
        if store is None:
            pool = await lifecycle.open_pool(stack, platform, SPEC)
            store = PgGatewayStore(pool)
            verify_store = verify_store or PgVerifyStore(pool)
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
        keys = AccountKeys(store, keyring, clock, objects=object_store)
        writer = PackWriter(
            store,
            object_store,
            clock,
            keys=keys,
            target_bytes=settings.pack_target_bytes,
            max_concurrent_writes=settings.max_concurrent_writes,
        )
        stack.push_async_callback(writer.close)

        reclaimer = reclaimer or _reclaimer(settings, object_store, clock)
        if reclaimer is not None and settings.gc_interval_seconds > 0:
            deps = collector.Deps(
                store, object_store, reclaimer, keys, clock, collector.Policy(safety=settings.gc_safety)
            )
            lifecycle.start_task(
                stack, collector.Collector(deps, interval=settings.gc_interval_seconds).run(), "garbage collection"
            )

        if pool is not None:
            session_events.start(stack, pool, store, sessions, clock, sweep_interval=settings.job_sweep_interval)
        handlers = consumers.record_handlers(store, clock, sessions)
        await lifecycle.start_consumer(stack, consumer_factory, consumers.GROUP_ID, handlers)

        issuer = await asyncio.to_thread(_issuer, settings, clock)
        vault = Vault(store, object_store, keys, clock)
        slots = BackupSlots(settings.max_running_backups, clock=clock)
        held_skips.start(stack, slots, store, clock)
        servicer = GatewayServicer(
            store=store,
            object_store=object_store,
            clock=clock,
            sessions=sessions,
            writer=writer,
            unthrottled=settings.unthrottled,
            manifest_segments=settings.manifest_segments,
            issuer=issuer,
            vault=vault,
            slots=slots,
        )
        # The internal ManifestService (decrypted manifests, for the catalog only) is served on the
        # internal listener, to callers with a service certificate; never on the agents' port
        # (ADR 0016, 0024).
        manifests = manifest_api.register(
            manifest_api.ManifestServicer(store=store, object_store=object_store, keys=keys)
        )
        admin = register_admin(AgentAdminServicer(store=store, clock=clock, sessions=sessions, vault=vault))

        def internal(server: grpc.aio.Server) -> None:
            manifests(server)
            admin(server)

        internal_listen = settings.internal_listen or platform.internal_listen
        if not internal_listen:
            log.warning("no internal listener (STRONGROOM_GATEWAY_INTERNAL_LISTEN): the catalog cannot index points")
        if issuer is not None:
            await _serve_agent_mtls(stack, settings, servicer, issuer, store, clock)
        bearer = agent_certs.bearer_authenticator(store, data_calls=settings.agent_bearer_data_calls)
        public = register(servicer)
        if verify_store is not None:
            verify = _start_verification(stack, settings, verify_store, object_store, keys, clock)
            agents_api = public

            def public(server: grpc.aio.Server) -> None:
                agents_api(server)
                verify(server)

        if pool is not None:
            # Operators call the VerifyService here: their API tokens and OIDC bearers are checked as
            # everywhere else; agents keep their own authenticator (ADR 0024, 0033).
            auth = (await serving.open_auth(stack, platform, clock, agents=bearer, audit_sink=audit_sink)).interceptor
        else:
            auth = serving.agents_only(bearer, audit_sink=audit_sink)
        await serving.serve_listeners(
            stack,
            "gateway",
            platform,
            settings.grpc_listen,
            public,
            auth=auth,
            internal_listen=internal_listen,
            internal_register=internal,
        )
        await stop.wait()
        log.info("gateway stopping")


def _start_verification(
    stack: AsyncExitStack,
    settings: Settings,
    store: VerifyStore,
    object_store: ObjectStore,
    keys: AccountKeys,
    clock: Clock,
) -> serving.Register:
    """Start the verification worker; return the VerifyService's registration."""
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=verify_engine.CHECK_THREADS, thread_name_prefix="verify"
    )
    stack.callback(executor.shutdown, wait=False, cancel_futures=True)
    deps = verify_engine.Deps(
        store=store,
        objects=object_store,
        keys=keys,
        clock=clock,
        rate=ReadRate(clock, settings.verify_bytes_per_second),
        owner=f"gateway-{uuid.uuid4()}",
        executor=executor,
        cover_days=settings.verify_cover_days,
    )
    worker = VerifyWorker(deps, poll_interval=settings.job_poll_interval, daily=settings.verify_daily)
    lifecycle.start_task(stack, worker.run(), "verification worker")
    return verify_api.register(verify_api.VerifyServicer(store=store, clock=clock, wake=worker.wake))


def _reclaimer(settings: Settings, object_store: ObjectStore, clock: Clock) -> ObjectStore | None:
    """The store that deletes: the reclaimer identity on S3 (ADR 0035), else the gateway's own store."""
    platform = settings.platform
    if platform.object_store != "s3":
        return object_store
    if platform.s3 is None or not settings.reclaim_access_key:
        log.warning("no reclaimer identity (STRONGROOM_S3_RECLAIM_ACCESS_KEY): storage is not reclaimed")
        return None
    s3 = dataclasses.replace(
        platform.s3, access_key=settings.reclaim_access_key, secret_key=settings.reclaim_secret_key
    )
    return S3ObjectStore.from_settings(s3, clock=clock)


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
