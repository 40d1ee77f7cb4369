"""Process lifecycle helpers: run a service's main coroutine until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from strongroom_telemetry import process as telemetry_process
from strongroom_telemetry.config import TelemetrySettings, TelemetrySettingsError
from strongroom_telemetry.grpc_tracing import TracingServerInterceptor
from strongroom_telemetry.logs import configure_logging as _configure_logging

from strongroom_platform.grpc_errors import ErrorMappingInterceptor
from strongroom_platform.health import add_standard_services
from strongroom_platform.settings import SettingsError

log = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT")


def configure_logging(service: str, level: str = "INFO") -> None:
    """Plain-text logs on stderr, one line per record, prefixed with the service name (tools and
    tests; a service's entry point logs as ``STRONGROOM_LOG_FORMAT`` says, see :func:`service_main`)."""
    _configure_logging(service, log_format="text", level=level)


FORCE_AFTER_SECONDS = 2.0
# A service must be gone this long after it was asked to stop: first its main
# task is cancelled, and if even that hangs (a blocked thread, an unreachable
# broker) the process exits hard, so a supervisor never waits forever.
SHUTDOWN_GRACE_SECONDS = 25.0
HARD_EXIT_AFTER_SECONDS = 40.0


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop_event)`` in a new event loop; SIGINT/SIGTERM set the event.

    ``main`` is expected to start its servers, await the event, then shut down
    gracefully. A signal arriving more than ``FORCE_AFTER_SECONDS`` after the
    first cancels it outright; one arriving sooner is the same Ctrl-C seen
    twice (a terminal signals the whole process group, and ``uv run`` or
    ``make`` forward it once more) and is ignored.
    """

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        first_signal_at: list[float] = []

        def on_signal() -> None:
            now = loop.time()
            if not first_signal_at:
                first_signal_at.append(now)
                stop.set()
                if task is not None:
                    loop.call_later(SHUTDOWN_GRACE_SECONDS, task.cancel)
                watchdog = threading.Timer(HARD_EXIT_AFTER_SECONDS, os._exit, args=(70,))
                watchdog.daemon = True
                watchdog.start()
            elif now - first_signal_at[0] > FORCE_AFTER_SECONDS and task is not None:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await main(stop)

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(runner())


# The shortest keepalive ping interval a client may use on an idle stream (the agent uses 30 s).
MIN_CLIENT_PING_INTERVAL_MS = 20_000


async def start_grpc_server(
    listen: str,
    register: Callable[[grpc.aio.Server], None],
    *,
    max_message_bytes: int = 64 << 20,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server on ``listen`` (host:port; port 0 = any); return it and the bound port.

    With ``credentials`` (``strongroom_platform.tls.listener_credentials``) the port speaks TLS only;
    without, plaintext only.

    Every call runs in a span continuing the caller's trace (``strongroom_telemetry.grpc_tracing``,
    outermost, so the span carries the final status); inside it the error mapping of
    ``grpc_errors``, so a ``ServiceError`` raised by one of ``interceptors`` (an authentication
    check, say) or by a servicer reaches the caller as its status code, and no exception reaches
    it with its own text. The server also carries the health service and reflection
    (``health.add_standard_services``), reporting SERVING once started.
    """
    server = grpc.aio.server(
        interceptors=[TracingServerInterceptor(), ErrorMappingInterceptor(), *interceptors],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Agents hold one idle stream each and ping it every 30 s, so a dead link is noticed; gRPC's
            # default (one ping per 5 min without data) counts each such ping as a strike and, at the
            # third, answers with GOAWAY "too_many_pings", dropping the session and every call on the
            # connection (seen in bench/fleet.py). The key is GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_
            # WITHOUT_DATA_MS's string, which has no "recv" in it: an unknown key is silently ignored,
            # and the misspelt one used before left the 5 min default in force (ADR 0050, session 5).
            # gRPC's limit of two strikes stays: a client pinging more often is still cut off.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ],
    )
    health = await add_standard_services(server, register)
    port = server.add_insecure_port(listen) if credentials is None else server.add_secure_port(listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await health.serving()
    return server, port


async def serve_grpc(
    service: str,
    listen: str,
    register: Callable[[grpc.aio.Server], None],
    *,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> grpc.aio.Server:
    """Start the service's gRPC server on ``listen`` and announce it.

    Prints ``LISTENING <service> <host>:<port>`` on stdout once serving (the
    line supervisors and tests wait for; the port is the bound one when
    ``listen`` asks for port 0). The caller stops the server.
    """
    server, port = await start_grpc_server(listen, register, credentials=credentials, interceptors=interceptors)
    host = listen.rsplit(":", 1)[0]
    print(f"LISTENING {service} {host}:{port}", flush=True)
    log.info("%s serving on %s:%d", service, host, port)
    return server


def service_main(
    service: str,
    settings_from_env: Callable[[Mapping[str, str]], SettingsT],
    run: Callable[[SettingsT, asyncio.Event], Awaitable[None]],
) -> None:
    """The body of a service's ``main()``: settings from ``os.environ``, then telemetry (JSON logs,
    traces, metrics; ADR 0039), then ``run(settings, stop)`` until SIGINT/SIGTERM (see
    :func:`run_until_signalled`); spans and metrics are flushed at exit.

    Bad settings end the process with status 2 and the message on stderr, before anything else
    starts; also those found while starting (a listener refused plaintext, a master key missing).
    """
    try:
        telemetry_settings = TelemetrySettings.from_env(os.environ)
        settings = settings_from_env(os.environ)
    except (TelemetrySettingsError, SettingsError) as exc:
        print(f"strongroom-{service}: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        telemetry = telemetry_process.start(service, telemetry_settings, announce=sys.stdout)
    except OSError as exc:
        print(f"strongroom-{service}: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        _serve_main(service, settings, run)
    finally:
        telemetry.shutdown()


def _serve_main(
    service: str,
    settings: SettingsT,
    run: Callable[[SettingsT, asyncio.Event], Awaitable[None]],
) -> None:
    refused: list[SettingsError] = []

    async def serve(stop: asyncio.Event) -> None:
        try:
            await run(settings, stop)
        except SettingsError as exc:
            refused.append(exc)

    run_until_signalled(serve)
    if refused:
        print(f"strongroom-{service}: {refused[0]}", file=sys.stderr)
        sys.exit(2)
