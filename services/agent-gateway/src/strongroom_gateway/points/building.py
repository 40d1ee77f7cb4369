"""Building a committed point's manifest, on threads of its own.

Contract: ``build`` encodes the point's sorted entries (the base point's merged with the changes
and deleted paths, ``synthesis``) and checks every referenced chunk through ``locate``, which runs
the lookups on the event loop while the thread goes on decoding. At most ``BUILD_THREADS`` commits
build at once, on ``build_threads()``, never on the loop's default executor (ADR 0050 update).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable

from strongroom_platform.manifest import decode_manifest
from strongroom_platform.threads import WorkerThreads

from strongroom_gateway.points.packs import chunk_packs
from strongroom_gateway.ports import GatewayStore
from strongroom_gateway.synthesis import BuiltManifest, SortedSpool, build_manifest, merge_entries

# Commits building their manifest at once (threads of their own, see build_threads).
BUILD_THREADS = 4

# Starts a lookup of chunk ids: the packs holding them and the ids not stored.
Locate = Callable[[list[bytes]], concurrent.futures.Future[tuple[set[str], list[bytes]]]]

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

    def locate(ids: list[bytes]) -> concurrent.futures.Future[tuple[set[str], list[bytes]]]:
        return asyncio.run_coroutine_threadsafe(chunk_packs(store, account_id, ids), loop)

    return locate


def build(base_manifest: bytes | None, changes: SortedSpool, deleted: SortedSpool, locate: Locate) -> BuiltManifest:
    """The point's manifest: the base's entries (if any) merged with ``changes`` minus ``deleted``."""
    base_entries = decode_manifest(base_manifest) if base_manifest is not None else iter(())
    if base_manifest is not None and not changes.count and not deleted.count:
        # Nothing changed (the daily case of an idle server): the base's manifest is this
        # point's manifest; only the chunk references are checked again.
        return build_manifest(base_entries, locate, encoded=base_manifest)
    return build_manifest(merge_entries(base_entries, changes.sorted(), deleted.sorted()), locate)


def relocate(built: BuiltManifest, locate: Locate) -> set[str]:
    """The packs holding the built manifest's chunks now (after collection moved some)."""
    return build_manifest(decode_manifest(built.data), locate, encoded=built.data).packs
