"""Object-store calls run on threads of their own (strongroom_platform.threads, ADR 0050 update):
a saturated default executor — threads waiting for the event loop, as the gateway's manifest build
waits for a pool connection — does not hold up a bucket write a transaction is waiting for."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from strongroom_platform.objectstore_fs import FilesystemObjectStore
from strongroom_platform.testing import FakeClock
from strongroom_platform.threads import WorkerThreads

_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


@pytest.fixture
def released() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # whatever happens, the blocked default-executor threads end


async def _saturate_default_executor(released: threading.Event, threads: int) -> list[asyncio.Future[bool]]:
    """Give the loop a default executor of ``threads`` threads and occupy every one of them."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=threads))
    blocked = [asyncio.ensure_future(asyncio.to_thread(released.wait)) for _ in range(threads)]
    await asyncio.sleep(0.1)
    probe = asyncio.ensure_future(asyncio.to_thread(lambda: True))
    await asyncio.sleep(0.2)
    assert not probe.done(), "the default executor was not saturated: the test proves nothing"
    return [*blocked, probe]


async def test_a_bucket_write_does_not_wait_for_the_default_executor(tmp_path: Path, released: threading.Event) -> None:
    store = FilesystemObjectStore(tmp_path / "bucket", FakeClock())
    waiting = await _saturate_default_executor(released, 2)
    until = FakeClock().now() + dt.timedelta(days=1)
    await asyncio.wait_for(store.put("a/record", b"payload", retain_until=until), timeout=10)
    assert await asyncio.wait_for(store.get("a/record"), timeout=10) == b"payload"
    released.set()
    await asyncio.wait_for(asyncio.gather(*waiting), timeout=10)


async def test_worker_threads_run_the_call_with_the_callers_context() -> None:
    threads = WorkerThreads(2, "test")
    _VAR.set("caller")
    try:
        name, value = await threads.run(lambda: (threading.current_thread().name, _VAR.get()))
        assert name.startswith("test") and value == "caller"
        with pytest.raises(ZeroDivisionError):
            await threads.run(lambda: 1 / 0)
    finally:
        threads.shutdown()
    with pytest.raises(ValueError):
        WorkerThreads(0, "none")
