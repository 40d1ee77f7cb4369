"""The gateway's verification task: queue the daily sample, run queued verifications one at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from strongroom_platform.clock import Clock

from strongroom_gateway.verify.engine import Deps, run_verification
from strongroom_gateway.verify.model import Verification
from strongroom_gateway.verify.ports import VerifyStore

log = logging.getLogger(__name__)


def new_id() -> str:
    return str(uuid.uuid4())


async def schedule_sample(
    store: VerifyStore, clock: Clock, *, make_id: Callable[[], str] = new_id
) -> Verification | None:
    """Queue today's sample (UTC day) unless one was queued today, by this or another gateway."""
    now = clock.now()
    sample = Verification(
        verification_id=make_id(),
        account_id="",
        scope="sample",
        target_id="",
        instance_id="",
        state="queued",
        created_at=now,
    )
    async with store.transaction() as tx:
        if not await tx.claim_day(now.date(), sample.verification_id):
            return None
        await tx.insert_verification(sample)
    log.info("queued the daily verification sample %s", sample.verification_id)
    return sample


class VerifyWorker:
    """Runs verifications in this gateway; ``wake`` starts one at once (else every ``poll_interval`` s)."""

    def __init__(self, deps: Deps, *, poll_interval: float = 5.0, daily: bool = True) -> None:
        self._deps = deps
        self._poll = poll_interval
        self._daily = daily
        self.wake = asyncio.Event()

    async def step(self) -> bool:
        """Queue the day's sample if due, then run one verification; True when one ran."""
        deps = self._deps
        if self._daily:
            await schedule_sample(deps.store, deps.clock)
        now = deps.clock.now()
        async with deps.store.transaction() as tx:
            claimed = await tx.claim_verification(deps.owner, now, now + deps.lease)
        if claimed is None:
            return False
        log.info("verification %s (%s) started", claimed.verification_id, claimed.scope)
        await run_verification(claimed, deps)
        return True

    async def run(self) -> None:
        """Until cancelled. A failing database is retried at the next poll (nothing is lost: the rows stay)."""
        while True:
            self.wake.clear()
            try:
                if await self.step():
                    continue
            except Exception:
                log.exception("verification worker: will retry in %.0f s", self._poll)
            waiters = [
                asyncio.ensure_future(self.wake.wait()),
                asyncio.ensure_future(self._deps.clock.sleep(self._poll)),
            ]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
