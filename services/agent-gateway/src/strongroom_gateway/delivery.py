"""Job commands of the sessions woken together, read and marked delivered together (ADR 0050).

When many jobs arrive at once (a scheduling pass, a notification burst), every woken session
reads its unfinished jobs and marks what it sends as delivered. One transaction per session and
step would make the delivery of 1,000 jobs 2,000 transactions, each a commit to wait for.
:class:`Coalescer` runs one load at a time with every key asked for meanwhile, so under a burst the
reads and the marks go to the database in batches, and a lone request is served at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

from strongroom.agent.v1 import gateway_pb2

from strongroom_gateway.admission import BackupSlots
from strongroom_gateway.agents import Identity, commands_to_send
from strongroom_gateway.ports import Account, GatewayStore, Job
from strongroom_gateway.sessions import Session

__all__ = ["CommandDelivery", "Coalescer"]

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


class CommandDelivery:
    """What each session must send, and the marking of sent jobs as delivered, batched across sessions."""

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
        self._reads: Coalescer[tuple[str, str], tuple[list[Job], Account | None]] = Coalescer(
            self._read, max_batch=max_batch
        )
        self._marks: Coalescer[str, None] = Coalescer(self._mark, max_batch=max_batch)

    async def pending(self, identity: Identity, session: Session) -> list[tuple[str, gateway_pb2.AgentCommand]]:
        """The commands ``session`` has not sent yet (``agents.commands_to_send``), but the backups
        it must hold until this replica has a free slot (``admission.BackupSlots``)."""
        jobs, account = await self._reads.get((identity.instance_id, identity.account_id))
        jobs = self.slots.admit(session, jobs)
        return commands_to_send(identity, session, jobs, account, unthrottled=self._unthrottled)

    async def mark_delivered(self, job_ids: Sequence[str]) -> None:
        """Mark queued jobs delivered (before they are sent: the agent may read manifests at once)."""
        await asyncio.gather(*(self._marks.get(job_id) for job_id in job_ids))

    async def _read(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[list[Job], Account | None]]:
        async with self._store.transaction() as tx:
            jobs = await tx.unfinished_jobs_of([instance_id for instance_id, _ in keys])
            accounts = await tx.get_accounts(sorted({account_id for _, account_id in keys}))
        return {(i, a): (jobs.get(i, []), accounts.get(a)) for i, a in keys}

    async def _mark(self, job_ids: list[str]) -> dict[str, None]:
        async with self._store.transaction() as tx:
            await tx.mark_delivered(job_ids)
        return dict.fromkeys(job_ids)
