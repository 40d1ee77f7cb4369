"""Process lifecycle helpers: run a service's main coroutine until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

import grpc


def configure_logging(service: str, level: str = "INFO") -> None:
    """Plain-text logs on stderr, one line per record, prefixed with the service name."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    # aiokafka and faust are chatty at INFO about every rebalance.
    for noisy in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop_event)`` in a new event loop; SIGINT/SIGTERM set the event.

    ``main`` is expected to start its servers, await the event, then shut down
    gracefully. A second signal cancels it outright.
    """

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await main(stop)

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(runner())


async def start_grpc_server(
    listen: str, register: Callable[[grpc.aio.Server], None], *, max_message_bytes: int = 64 << 20
) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server on ``listen`` (host:port; port 0 = any); return it and the bound port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    register(server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    return server, port
