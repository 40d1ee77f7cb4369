"""Composition root of the REST edge: routes from the descriptors, channels, the HTTPS listener."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from contextlib import AsyncExitStack
from pathlib import Path
from typing import cast

import asyncpg
import grpc
from aiohttp import web
from strongroom_platform import lifecycle
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.db import create_pool
from strongroom_platform.pg_roles import check_service_login, migrate_schemas
from strongroom_platform.settings import TlsSettings
from strongroom_platform.tls import backend_ssl_context

from strongroom_api import backends, console, http_app, idempotency
from strongroom_api.edge import Invoke
from strongroom_api.idempotency_pg import PgIdempotencyStore
from strongroom_api.migrations import SPEC
from strongroom_api.openapi import build_document
from strongroom_api.rules import Router, load_routes
from strongroom_api.settings import Settings

log = logging.getLogger(__name__)

CERT_CHECK_SECONDS = 30.0


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """TLS 1.2+ with the process's certificate; no client certificate is asked for (operators hold none)."""
    assert tls.cert_file is not None and tls.key_file is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def _signature(paths: tuple[Path, Path]) -> tuple[int, ...]:
    return tuple(int(path.stat().st_mtime_ns) for path in paths)


async def _reload_certificate(context: ssl.SSLContext, tls: TlsSettings, clock: Clock) -> None:
    """Load the certificate again when its files change (new handshakes get it), like the gRPC listeners."""
    assert tls.cert_file is not None and tls.key_file is not None
    paths = (tls.cert_file, tls.key_file)
    seen = _signature(paths)
    while True:
        await clock.sleep(CERT_CHECK_SECONDS)
        try:
            current = _signature(paths)
            if current != seen:
                context.load_cert_chain(tls.cert_file, tls.key_file)
                seen = current
                log.info("api: TLS certificate reloaded from %s", tls.cert_file)
        except (OSError, ssl.SSLError):
            log.exception("api: reloading the TLS certificate failed; keeping the previous one")


async def _idempotency_store(stack: AsyncExitStack, settings: Settings) -> idempotency.IdempotencyStore:
    """PostgreSQL (shared by the replicas) with STRONGROOM_PG_DSN, else this process's memory."""
    ttl = dt.timedelta(seconds=settings.idempotency_ttl_seconds)
    if settings.pg_dsn is None:
        return idempotency.MemoryIdempotencyStore(ttl=ttl, max_keys=settings.idempotency_max_keys)
    tls = backend_ssl_context(settings.pg_tls)
    if settings.pg_migrate_dsn is not None:
        await migrate_schemas(settings.pg_migrate_dsn, [SPEC], tls=tls)
    pool = await create_pool(settings.pg_dsn, SPEC.schema, max_size=4, tls=tls)
    stack.push_async_callback(pool.close)
    async with pool.acquire() as conn:
        await check_service_login(cast(asyncpg.Connection, conn), SPEC)
    # A claim outlives its request by the call timeout and a margin; then another replica may take it over.
    lease = dt.timedelta(seconds=min(2 * settings.call_timeout + 30, settings.idempotency_ttl_seconds / 2))
    return PgIdempotencyStore(pool, ttl=ttl, lease=lease)


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    clock: Clock | None = None,
    invoke: Invoke | None = None,
    store: idempotency.IdempotencyStore | None = None,
) -> None:
    """Serve until ``stop`` is set; prints ``LISTENING api <host>:<port>`` once serving.

    ``invoke`` (tests) replaces the gRPC calls to the services; ``store`` the idempotency keys.
    """
    clock = clock or SystemClock()
    routes = load_routes()
    document = build_document(routes)
    openapi_yaml, openapi_json = http_app.openapi_bytes(document)
    async with AsyncExitStack() as stack:
        channels: dict[str, grpc.aio.Channel] = {}
        if invoke is None:
            ca_pem = settings.tls.ca_file.read_bytes() if settings.tls and settings.tls.ca_file else None
            channels = {
                name: backends.open_channel(address, ca_pem=ca_pem, insecure_plaintext=settings.insecure_plaintext)
                for name, address in settings.backends.items()
            }
            for channel in channels.values():
                stack.push_async_callback(channel.close, None)
            invoke = backends.GrpcInvoker(channels, timeout=settings.call_timeout)
        if store is None:
            store = await _idempotency_store(stack, settings)
        app = http_app.build_app(
            router=Router(routes),
            invoke=invoke,
            store=store,
            clock=clock,
            openapi_yaml=openapi_yaml,
            openapi_json=openapi_json,
            max_body_bytes=settings.max_body_bytes,
        )
        if channels:  # the web console calls the same services (ADR 0054)
            app.add_subapp(
                console.PREFIX,
                console.build_console(
                    channels=channels,
                    clock=clock,
                    secure_cookies=not settings.insecure_plaintext,
                    gateway=settings.backends["gateway"],
                    timeout=settings.call_timeout,
                ),
            )
        context = None
        if not settings.insecure_plaintext and settings.tls is not None:
            context = server_ssl_context(settings.tls)
            lifecycle.start_task(stack, _reload_certificate(context, settings.tls, clock), "api-certificate")
        else:
            log.warning("api listens WITHOUT TLS (STRONGROOM_INSECURE_PLAINTEXT=1)")
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        host, _, port = settings.listen.rpartition(":")
        site = web.TCPSite(runner, host, int(port), ssl_context=context)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else int(port)
        print(f"LISTENING api {host}:{bound}", flush=True)
        log.info(
            "api: web console at %s://%s:%d%s/", "http" if context is None else "https", host, bound, console.PREFIX
        )
        log.info("api serving %d operations on %s:%d", len(routes), host, bound)
        await stop.wait()
        log.info("api stopping")
