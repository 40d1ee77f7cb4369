"""Job commands of the sessions woken together, read and marked delivered together (ADR 0050).

When many jobs arrive at once (a scheduling pass, a notification burst), every woken session
reads its unfinished jobs and marks what it sends as delivered. One transaction per session and
step would make the delivery of 1,000 jobs 2,000 transactions, each a commit to wait for.
:class:`Coalescer` runs a load with every key asked for meanwhile, so under a burst the sessions
woken together are served by one transaction — their jobs read, the commands chosen, the jobs to
send marked delivered, one commit — and a lone request is served at once. Two loads may run at
once (:data:`TAKE_CONCURRENCY`): the sessions woken while one runs (the next partition's commit)
do not wait for it to end.
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

TAKE_CONCURRENCY = 2
"""Delivery transactions of one process at a time (two pool connections of ten at most): sessions
woken while one runs start the second at once (ADR 0050, session 9)."""

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """``get(key)`` answers from ``load(keys)``, which runs at most ``concurrency`` calls at a time,
    each with every key waiting when it starts (at most ``max_batch``); a failure of ``load`` fails
    the callers of that call.

    With ``concurrency`` above 1, keys asked for while a load runs start a load of their own at once
    (up to the limit) instead of waiting for it: a burst that arrives in waves (one partition's
    commit after another) is not served one wave after another. Keys asked for while every load runs
    go together into the next one."""

    def __init__(
        self, load: Callable[[list[K]], Awaitable[Mapping[K, V]]], *, max_batch: int = 1000, concurrency: int = 1
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._load = load
        self._max_batch = max_batch
        self._concurrency = concurrency
        self._waiting: list[tuple[K, asyncio.Future[V]]] = []
        self._workers: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        # A worker that has returned may not have run its done callback yet: count the running ones.
        self._workers = {worker for worker in self._workers if not worker.done()}
        if len(self._workers) < self._concurrency:
            self._workers.add(asyncio.create_task(self._drain()))
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
        concurrency: int = TAKE_CONCURRENCY,
        slots: BackupSlots | None = None,
    ) -> None:
        self._store = store
        self._unthrottled = unthrottled
        self.slots = slots or BackupSlots(0)
        self._takes: Coalescer[_Woken, Commands] = Coalescer(self._take, max_batch=max_batch, concurrency=concurrency)

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
