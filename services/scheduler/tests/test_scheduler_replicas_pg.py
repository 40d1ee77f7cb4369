"""Two scheduler replicas run the periodic loops at the same moment (ADR 0050, update of session 4):
the preparation-timeout sweep, alert pruning and audit pruning, each pass of the two replicas
together, on real PostgreSQL, has its effect once. (The scheduling pass: ``test_scheduler_pg``'s
``test_two_schedulers_never_double_schedule`` and ``test_scheduler_admission``'s
``test_replicas_together_never_pass_the_cap``; alert delivery: ``test_alerts_pg``'s
``test_lease_and_concurrent_workers``.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import random
from collections.abc import AsyncIterator

import asyncpg
import pytest
from scheduler_helpers import call
from strongroom.events.v1 import events_pb2
from strongroom.scheduler.v1 import scheduler_pb2 as S
from strongroom_platform.events import INSTANCE_STATUS_CHANGED
from strongroom_platform.testing import FakeClock
from strongroom_platform.trusted_time import set_clock_offset
from strongroom_scheduler import handlers
from strongroom_scheduler.alerts import handlers as alert_handlers
from strongroom_scheduler.alerts.delivery import DeliveryPolicy, deliver_due
from strongroom_scheduler.alerts.handlers import AlertDeps
from strongroom_scheduler.alerts.model import WEBHOOK
from strongroom_scheduler.alerts.prune import PrunePolicy, prune_alerts
from strongroom_scheduler.alerts.repository import PgAlertStore
from strongroom_scheduler.alerts.testing import RecordingSender
from strongroom_scheduler.alerts.webhook import WebhookPolicy
from strongroom_scheduler.audit_retention import AuditRetention, prune_audit
from strongroom_scheduler.handlers import Deps
from strongroom_scheduler.inventory import note_preparation_failures
from strongroom_scheduler.migrations import SPEC
from strongroom_scheduler.repository import PgSchedulerStore
from strongroom_testing.fixtures import PgLogins
from test_alerts_prune import call as alert_prune_call
from test_alerts_prune import raise_alert, subscribe
from test_scheduler_audit_retention import Trail

pytestmark = pytest.mark.integration

DAY = 86400


@pytest.fixture
async def pools(pg_logins: PgLogins) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """Two replicas' pools, as the scheduler's own role."""
    first, second = await pg_logins.pool(SPEC), await pg_logins.pool(SPEC)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_two_replicas_note_each_preparation_failure_once(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], clock: FakeClock
) -> None:
    first, second = (PgSchedulerStore(pool) for pool in pools)
    deps = Deps(store=first, clock=clock, rng=random.Random(5), preparation_timeout=dt.timedelta(minutes=30))
    ids = set()
    for n in range(12):
        instance, _ = await handlers.activate_backup(
            deps, account_id="acme", name=f"web-{n}", region="r", settings=None, call=call("ActivateBackup")
        )
        ids.add(instance.instance_id)
    clock.advance(minutes=31)
    sweeps = await asyncio.gather(*(note_preparation_failures(s, clock, batch_size=2) for s in (first, second) * 2))
    failed = [instance_id for sweep in sweeps for instance_id in sweep.failed]
    assert len(failed) == len(ids) and set(failed) == ids
    rows = await pools[0].fetch("SELECT payload FROM outbox WHERE topic = $1", INSTANCE_STATUS_CHANGED)
    changes = [events_pb2.InstanceStatusChanged.FromString(bytes(r["payload"])) for r in rows]
    published = [c.instance_id for c in changes if c.status == S.RUNNING_STATUS_PREPARATION_FAILED]
    assert sorted(published) == sorted(ids)  # one event per instance


async def test_two_replicas_prune_the_alert_history_once(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], clock: FakeClock
) -> None:
    first, second = (PgAlertStore(pool) for pool in pools)
    deps = AlertDeps(
        store=first, clock=clock, webhook_policy=WebhookPolicy(allow=(ipaddress.ip_network("127.0.0.1/32"),))
    )
    await subscribe(deps)
    count = 9
    for n in range(count):
        await raise_alert(deps, f"j-{n}")
    assert await deliver_due(first, {WEBHOOK: RecordingSender()}, clock, DeliveryPolicy(batch=50)) == count
    await alert_handlers.mark_messages_read(
        deps, "acme", [], all_messages=True, call=alert_prune_call("MarkMessagesRead")
    )
    clock.advance(91 * DAY)
    policy = PrunePolicy(keep=dt.timedelta(days=90), batch=2)
    passes = await asyncio.gather(*(prune_alerts(s, clock, policy) for s in (first, second) * 2))
    assert (sum(p.deliveries for p in passes), sum(p.messages for p in passes)) == (count, count)
    assert await pools[0].fetchval("SELECT count(*) FROM alert_deliveries") == 0
    assert await pools[0].fetchval("SELECT count(*) FROM alert_messages") == 0


async def test_two_replicas_prune_the_audit_trail_once(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], pg_logins: PgLogins
) -> None:
    first, second = (PgSchedulerStore(pool) for pool in pools)
    count = 25
    trail = Trail(first, FakeClock(dt.datetime.now(dt.UTC)), lambda: asyncio.sleep(0))
    for n in range(count):
        await trail.record(f"t-{n}")
    owner = await asyncpg.connect(pg_logins.owner)
    try:
        await set_clock_offset(owner, dt.timedelta(days=401))  # the trusted time the cut-off is taken by
        policy = AuditRetention(keep=dt.timedelta(days=400), batch=3)
        pruned = await asyncio.gather(*(prune_audit(s, policy) for s in (first, second) * 2))
        assert sum(pruned) == count
        assert await pools[0].fetchval("SELECT count(*) FROM audit_events") == 0
    finally:
        await set_clock_offset(owner, dt.timedelta(0))
        await owner.close()
