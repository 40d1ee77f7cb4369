"""faust-streaming's aiokafka transport with a fetch loop that hands a fetched batch over in one go.

faust-streaming's ``Consumer._drain_messages`` passes every fetched record to the conductor
(``callback``, which puts it in the channels of the partition's stream) through
``Service.wait_first(callback(message), suspend_flow.wait())``: four tasks per record (the record,
the flow's suspension, the service's stop and crash), three of them cancelled again, and two or
three event-loop iterations before the next record. Under a burst the loop also runs the partition
workers' database round trips, so records reached each worker at the pace of the loop's iterations,
one or two at a time, and the workers' batches (ADR 0050) stayed at 1-2 records: measured with the
gateway's job handler, 733 handler calls for 1,000 records (``bench/consume_floor.py``).

``Consumer`` here runs a whole fetched batch — the fetch, then every record's ``callback`` awaited
in place — as one task raced against the same three events. The conductor's callback puts a
record in its channel without suspending (unless the flow is stopped or the channel is full), so a
fetch of hundreds of records reaches the workers' channels within one loop iteration. What Faust
guarantees is kept: records are handed over in fetch order, one at a time, each read offset set
after its callback returned; a suspended flow (a rebalance) or a stopping consumer cancels the
batch as it cancelled the record in flight, and the records not handed over are fetched again
from the committed offsets after the rebalance (Faust seeks there), as before. Offsets,
acknowledgements and commits are untouched (``FaustConsumer`` acknowledges in order).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["BatchDrainConsumer", "BatchDrainTransport"]

_YIELD_EVERY = 100
"""Records handed over between two ``sleep(0)`` (Faust's own figure): a long fetch lets the loop run."""


class BatchDrainConsumer(faust_aiokafka.Consumer):
    """faust-streaming's aiokafka consumer; only the fetch loop differs (see the module)."""

    async def _drain_messages(self, fetcher: Any) -> None:
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                fetched = cast(AsyncGenerator[tuple[Any, Any], None], self.getmany(timeout=1.0))
                try:
                    # The fetch itself, awaited as Faust's loop awaits it: a rebalance never cuts it
                    # short (records fetched meanwhile are not dropped behind the seek to the
                    # committed offsets). What follows it in getmany does not suspend.
                    await self.sleep(0)
                    if self.should_stop:
                        continue
                    try:
                        first = await anext(fetched)
                    except StopAsyncIteration:
                        continue
                    await self.wait_first(self._hand_over(first, fetched), self.suspend_flow.wait())
                finally:
                    await fetched.aclose()
                    self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise

    async def _hand_over(self, first: tuple[Any, Any], rest: AsyncIterator[tuple[Any, Any]]) -> None:
        """Faust's per-record steps for one fetched batch, each record's callback awaited in place."""
        await self._hand_over_one(first)
        since_yield = 1
        async for item in rest:
            since_yield += 1
            if since_yield > _YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            await self._hand_over_one(item)

    async def _hand_over_one(self, item: tuple[Any, Any]) -> None:
        tp, message = item
        offset = message.offset
        read_offset = self._read_offset[tp]
        if read_offset is not None and offset < read_offset:
            return  # already handed over (Faust drops it too)
        if read_offset and offset - read_offset > 1 and self.app.topics.acks_enabled_for(message.topic):
            await self._add_gap(tp, read_offset + 1, offset)  # a gap in the offsets (compaction)
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()
        await cast(Callable[[Any], Awaitable[None]], self.callback)(message)
        self._read_offset[tp] = offset


class BatchDrainTransport(faust_aiokafka.Transport):
    """faust-streaming's aiokafka transport whose consumer is :class:`BatchDrainConsumer`."""

    Consumer: ClassVar[type[Any]] = BatchDrainConsumer
