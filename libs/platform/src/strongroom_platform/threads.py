"""Blocking calls on worker threads a component owns, not on the event loop's default executor.

``asyncio.to_thread`` shares one executor per loop: ``min(32, cores + 4)`` threads, six on a
2-core host. A component whose blocking calls a transaction waits for (the object store: a
commit writes its records to the bucket while holding its database connection) must not queue
behind threads that wait, in turn, for that database — a thread that bridges back to the loop
(``asyncio.run_coroutine_threadsafe(...).result()``) for a query blocks its executor thread
until a pool connection is free. With both in the default executor, six such waiters and eight
transactions waiting for a bucket write deadlocked a gateway until its clients' deadlines ran
out (``bench/fleet.py`` kill run, ADR 0050 update). :class:`WorkerThreads` gives a component its
own bounded set.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["WorkerThreads"]

T = TypeVar("T")


class WorkerThreads:
    """At most ``max_workers`` threads of their own (started on first use), for one component's
    blocking calls; :meth:`run` carries the caller's context variables (trace context) over, as
    ``asyncio.to_thread`` does."""

    def __init__(self, max_workers: int, name: str) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on one of the threads; the result or its exception."""
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def shutdown(self) -> None:
        """Let the threads end once their calls are done (idle threads end at once)."""
        self._executor.shutdown(wait=False)
