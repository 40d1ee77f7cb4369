"""Job commands of the sessions woken together, read and marked delivered together (ADR 0050).

When many jobs arrive at once (a scheduling pass, a notification burst), every woken session
reads its unfinished jobs and marks what it sends as delivered. One transaction per session and
step would make the delivery of 1,000 jobs 2,000 transactions, each a commit to wait for.
:class:`Coalescer` runs one load at a time with every key asked for meanwhile, so under a burst
the sessions woken together are served by one transaction — their jobs read, the commands chosen,
the jobs to send marked delivered, one commit — and a lone request is served at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, NamedTuple, TypeVar

from strongroom.agent.v1 import gateway_pb2

from strongroom_gateway.admission import BackupSlots
from strongroom_gateway.agents import Identity, commands_to_send
from strongroom_gateway.ports import GatewayStore
from strongroom_gateway.sessions import Session

__all__ = ["CommandDelivery", "Coalescer"]

Commands = list[tuple[str, gateway_pb2.AgentCommand]]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """``get(key)`` answers from ``load(keys)``, which runs one call at a time with every key
    waiting (at most ``max_batch``); a failure of ``load`` fails the callers of that call."""

    def __init__(self, load: Callable[[list[K]], Awaitable[Mapping[K, V]]], *, max_batch: int = 1000) -> None:
        self._load = load
        self._max_batch = max_batch
        self._waiting: list[tuple[K, asyncio.Future[V]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
            live = [(key, future) for key, future in batch if not future.done()]  # cancelled: session gone
            if not live:
                continue
            try:
                results = await self._load(list(dict.fromkeys(key for key, _ in live)))
            except Exception as exc:
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for key, future in live:
                if not future.done():
                    future.set_result(results[key])


class _Woken(NamedTuple):
    """A session that asks for its commands (a Session hashes by identity: one key per stream)."""

    identity: Identity
    session: Session


class CommandDelivery:
    """What each session must send, its jobs marked delivered in the same transaction, batched
    across the sessions woken together."""

    def __init__(
        self,
        store: GatewayStore,
        *,
        unthrottled: bool = False,
        max_batch: int = 1000,
        slots: BackupSlots | None = None,
    ) -> None:
        self._store = store
        self._unthrottled = unthrottled
        self.slots = slots or BackupSlots(0)
        self._takes: Coalescer[_Woken, Commands] = Coalescer(self._take, max_batch=max_batch)

    async def take(self, identity: Identity, session: Session) -> Commands:
        """The commands ``session`` has not sent yet (``agents.commands_to_send``), but the backups
        it must hold until this replica has a free slot (``admission.BackupSlots``); the jobs among
        them are marked delivered when this returns (before they are sent: the agent may read
        manifests at once). Sessions asking together share one transaction."""
        return await self._takes.get(_Woken(identity, session))

    async def _take(self, woken: list[_Woken]) -> dict[_Woken, Commands]:
        async with self._store.transaction() as tx:
            jobs = await tx.unfinished_jobs_of(list(dict.fromkeys(w.identity.instance_id for w in woken)))
            accounts = await tx.get_accounts(sorted({w.identity.account_id for w in woken}))
            out: dict[_Woken, Commands] = {}
            for w in woken:
                admitted = self.slots.admit(w.session, jobs.get(w.identity.instance_id, []))
                out[w] = commands_to_send(
                    w.identity, w.session, admitted, accounts.get(w.identity.account_id), unthrottled=self._unthrottled
                )
            sent_jobs = [key for commands in out.values() for key, _ in commands if not key.startswith("cancel:")]
            if sent_jobs:
                await tx.mark_delivered(sent_jobs)
        return out
