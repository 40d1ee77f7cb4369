"""Building a committed point's manifest, on threads of its own.

Contract: ``build`` encodes the point's sorted entries (the base point's merged with the changes
and deleted paths, ``synthesis``) and counts every referenced chunk's references per pack through ``locate``, which runs
the lookups on the event loop while the thread goes on decoding. At most ``BUILD_THREADS`` commits
build at once, on ``build_threads()``, never on the loop's default executor (ADR 0050 update).
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from strongroom_platform.manifest import decode_manifest
from strongroom_platform.threads import WorkerThreads

from strongroom_gateway.points.inherit import Inheritance, build_inherited
from strongroom_gateway.ports import GatewayStore
from strongroom_gateway.synthesis import BuiltManifest, Locate, SortedSpool, build_manifest, merge_entries

# Commits building their manifest at once (threads of their own, see build_threads).
BUILD_THREADS = 4

_build_workers: WorkerThreads | None = None


def build_threads() -> WorkerThreads:
    """The threads that build committed manifests (created on first use, shared by all commits).

    A build waits on the event loop for chunk locations (a query: a pool connection), so it must
    not take the loop's default executor, which the transactions holding those connections may be
    waiting on (ADR 0050 update); at most ``BUILD_THREADS`` commits build at once.
    """
    global _build_workers
    if _build_workers is None:
        _build_workers = WorkerThreads(BUILD_THREADS, "manifest-build")
    return _build_workers


def locator(store: GatewayStore, account_id: str, loop: asyncio.AbstractEventLoop) -> Locate:
    """``locate`` for a build thread: each lookup runs as a coroutine on ``loop``."""

    async def lookup(counts: dict[bytes, int]) -> tuple[dict[str, int], list[bytes]]:
        async with store.transaction() as tx:
            return await tx.chunk_pack_refs(account_id, counts)

    def locate(counts: dict[bytes, int]) -> concurrent.futures.Future[tuple[dict[str, int], list[bytes]]]:
        return asyncio.run_coroutine_threadsafe(lookup(counts), loop)

    return locate


def build(
    base_manifest: bytes | None,
    changes: SortedSpool,
    deleted: SortedSpool,
    locate: Locate,
    inherited: Inheritance | None,
) -> BuiltManifest:
    """The point's manifest: the base's entries (if any) merged with ``changes`` minus ``deleted``.

    With ``inherited`` (the base's references per pack, still exact) only the chunks of the sent and
    dropped entries are located (``inherit``); otherwise every chunk of the point is.
    """
    if base_manifest is not None and inherited is not None:
        return build_inherited(base_manifest, changes, deleted, locate, inherited)
    base_entries = decode_manifest(base_manifest) if base_manifest is not None else iter(())
    if base_manifest is not None and not changes.count and not deleted.count:
        # Nothing changed (the daily case of an idle server): the base's manifest is this
        # point's manifest; only the chunk references are checked again.
        return build_manifest(base_entries, locate, encoded=base_manifest)
    return build_manifest(merge_entries(base_entries, changes.sorted(), deleted.sorted()), locate)
