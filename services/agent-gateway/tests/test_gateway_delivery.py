"""Sessions woken together take their commands in one transaction: jobs read and marked delivered
together (ADR 0050, session 6)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import cast

from strongroom.agent.v1 import gateway_pb2
from strongroom_gateway.agents import Identity
from strongroom_gateway.delivery import CommandDelivery
from strongroom_gateway.ports import Account, GatewayStore, GatewayTx, Job
from strongroom_gateway.sessions import Session
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform.clock import utc

T0 = utc(2026, 12, 6, 1)


class _CountingStore:
    """The fake store, counting its transactions; the first one waits for ``release``."""

    def __init__(self) -> None:
        self.inner = InMemoryGatewayStore()
        self.transactions = 0
        self.release = asyncio.Event()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[GatewayTx]:
        self.transactions += 1
        if self.transactions == 1:
            await self.release.wait()
        async with self.inner.transaction() as tx:
            yield tx


def _backup(job_id: str, instance_id: str, account_id: str = "acct") -> Job:
    command = gateway_pb2.AgentCommand(run_backup=gateway_pb2.RunBackup(job_id=job_id))
    return Job(job_id, instance_id, account_id, "backup", command.SerializeToString(), "queued", False, T0)


async def _states(store: InMemoryGatewayStore, instance_ids: list[str]) -> dict[str, str]:
    async with store.transaction() as tx:
        jobs = await tx.unfinished_jobs_of(instance_ids)
    return {job.job_id: job.state for listed in jobs.values() for job in listed}


async def test_sessions_woken_together_read_and_mark_their_jobs_in_one_transaction() -> None:
    store = _CountingStore()
    async with store.inner.transaction() as tx:
        await tx.ensure_account(Account("acct", b"k" * 32, 7))
        await tx.insert_jobs([_backup(f"job-{n}", f"i-{n}") for n in range(50)])
    delivery = CommandDelivery(cast(GatewayStore, store))
    sessions = [(Identity(f"i-{n}", "acct"), Session(f"i-{n}")) for n in range(50)]

    first = asyncio.ensure_future(delivery.take(*sessions[0]))
    await asyncio.sleep(0)  # the first session's transaction starts alone (and waits)
    rest = [asyncio.ensure_future(delivery.take(*s)) for s in sessions[1:]]
    await asyncio.sleep(0)
    store.release.set()
    taken = [await first, *[await r for r in rest]]

    assert [[key for key, _ in commands] for commands in taken] == [[f"job-{n}"] for n in range(50)]
    assert all(commands[0][1].run_backup.repository.chunker_avg_size for commands in taken)
    # The 49 sessions woken while the first was served: one more transaction for all, not 2 per session.
    assert store.transactions == 2
    assert set((await _states(store.inner, [f"i-{n}" for n in range(50)])).values()) == {"delivered"}


async def test_what_a_session_sent_or_must_hold_is_neither_sent_again_nor_marked() -> None:
    store = _CountingStore()
    store.release.set()
    async with store.inner.transaction() as tx:
        await tx.ensure_account(Account("acct", b"k" * 32, 7))
        await tx.insert_jobs([_backup("job-a", "i-1"), _backup("job-b", "i-1"), _backup("job-c", "i-2", "other")])
    delivery = CommandDelivery(cast(GatewayStore, store))
    session = Session("i-1")
    session.sent.add("job-a")

    commands = await delivery.take(Identity("i-1", "acct"), session)
    # Another account's job (and an account unknown to the gateway) gets nothing.
    assert await delivery.take(Identity("i-2", "other"), Session("i-2")) == []

    assert [key for key, _ in commands] == ["job-b"]
    assert await _states(store.inner, ["i-1", "i-2"]) == {"job-a": "queued", "job-b": "delivered", "job-c": "queued"}
