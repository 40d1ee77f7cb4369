"""The PostgreSQL repository and the whole process, against a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from etag_check import check_a_stale_etag_changes_nothing
from scheduler_helpers import active_instance, admin, call, every_job_page, finished_jobs, update_job
from strongroom.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from strongroom.audit.v1 import audit_pb2, audit_pb2_grpc
from strongroom.auth.v1 import auth_pb2, auth_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.scheduler.v1 import scheduler_pb2 as S
from strongroom.scheduler.v1 import scheduler_pb2_grpc
from strongroom_platform import audit
from strongroom_platform.admin import create_admin_token
from strongroom_platform.auth.principal import reset_current_call, set_current_call
from strongroom_platform.clock import SystemClock, utc
from strongroom_platform.db import create_pool
from strongroom_platform.events import (
    AGENT_ENROLLED,
    ALERT_RAISED,
    AUDIT_RECORDED,
    INSTANCE_ACTIVATED,
    INSTANCE_SETTINGS_CHANGED,
    INSTANCE_STATUS_CHANGED,
    JOB_REQUESTED,
    JOB_UPDATED,
    new_meta,
)
from strongroom_platform.pg_roles import migrate_schemas
from strongroom_platform.settings import PlatformSettings
from strongroom_platform.testing import FakeClock, InMemoryAuditSink, InMemoryEventBus
from strongroom_scheduler import bootstrap, handlers
from strongroom_scheduler.errors import AlreadyExists
from strongroom_scheduler.handlers import Deps, SettingsInput
from strongroom_scheduler.inventory import InventoryInput, note_preparation_failures
from strongroom_scheduler.jobs import start_job
from strongroom_scheduler.migrations import SCHEMA, SPEC
from strongroom_scheduler.models import UNFINISHED_JOB_STATUSES, BlockDevice
from strongroom_scheduler.repository import _UNFINISHED, PgSchedulerStore
from strongroom_scheduler.schedule import schedule_due
from strongroom_scheduler.settings import Settings
from strongroom_testing.fixtures import PgLogins
from strongroom_testing.pki import LocalPki

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(pg_logins: PgLogins) -> AsyncIterator[asyncpg.Pool]:
    pool = await pg_logins.pool(SPEC)  # as the scheduler's own role (ADR 0031)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def pg_deps(pool: asyncpg.Pool, clock: FakeClock) -> Deps:
    return Deps(store=PgSchedulerStore(pool), clock=clock, rng=random.Random(3))


def test_unfinished_statuses_match_the_unique_index() -> None:
    assert {int(s) for s in _UNFINISHED.strip("()").split(",")} == set(UNFINISHED_JOB_STATUSES)


async def test_migrations_are_idempotent(pool: asyncpg.Pool, pg_logins: PgLogins) -> None:
    assert await migrate_schemas(pg_logins.owner, [SPEC]) == {SCHEMA: 0}


async def test_repository_round_trip(pg_deps: Deps, pool: asyncpg.Pool, clock: FakeClock) -> None:
    instance = await active_instance(pg_deps, minute=90)
    await handlers.update_settings(
        pg_deps,
        instance.instance_id,
        SettingsInput(roots=["/srv", "/data"], priority=common_pb2.BACKUP_PRIORITY_HIGH),
        ["roots", "priority"],
        call=call("UpdateSettings"),
    )
    stored = await handlers.get_instance(pg_deps, instance.instance_id, call=call("GetInstance"))
    assert (stored.roots, stored.enrolled, stored.hostname) == (["/srv", "/data"], True, "web-1.example")
    assert stored.activated_at == clock.now()
    job = await handlers.run_backup_now(pg_deps, instance.instance_id, call=call("RunBackupNow"))
    await update_job(pg_deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_RUNNING, files=7)
    clock.advance(5)
    await update_job(
        pg_deps, job.job_id, instance.instance_id, common_pb2.JOB_STATUS_PARTIAL_COMPLETE, version_id="v", files=9
    )
    done = await handlers.get_job(pg_deps, job.job_id, call=call("GetJob"))
    assert (done.status, done.version_id, done.stats.files_scanned, done.roots) == (
        common_pb2.JOB_STATUS_PARTIAL_COMPLETE,
        "v",
        9,
        ["/srv", "/data"],
    )
    assert done.finished_at == clock.now()
    assert [
        j.job_id for j in (await handlers.list_jobs(pg_deps, instance.instance_id, 10, call=call("ListJobs"))).jobs
    ] == [job.job_id]
    assert [
        i.instance_id
        for i in (await handlers.list_instances(pg_deps, "acme", "cn-hangzhou", call=call("ListInstances"))).instances
    ] == [instance.instance_id]
    topics = [r["topic"] for r in await pool.fetch("SELECT topic FROM outbox ORDER BY id")]
    # activation and the settings update each publish the settings (instance-settings-changed);
    # every status change (new -> PREPARING -> READY -> BACKING_UP -> RUNNING) its own event; the
    # partially completed job raises its alert in the transaction that finished it
    assert [t for t in topics if t != INSTANCE_STATUS_CHANGED] == [
        INSTANCE_ACTIVATED,
        INSTANCE_SETTINGS_CHANGED,
        INSTANCE_SETTINGS_CHANGED,
        JOB_REQUESTED,
        ALERT_RAISED,
    ]
    assert topics.count(INSTANCE_STATUS_CHANGED) == 4
    assert await pool.fetchval("SELECT count(*) FROM processed_events") == 3


async def test_database_refuses_a_second_unfinished_job(pg_deps: Deps) -> None:
    instance = await active_instance(pg_deps)
    await handlers.run_backup_now(pg_deps, instance.instance_id, call=call("RunBackupNow"))
    with pytest.raises(asyncpg.UniqueViolationError):
        async with pg_deps.store.transaction() as tx:
            current = await tx.get_instance(instance.instance_id)
            assert current is not None
            await start_job(tx, current, 2, pg_deps.clock.now())


async def test_two_schedulers_never_double_schedule(pg_deps: Deps, pg_logins: PgLogins, clock: FakeClock) -> None:
    ids = [(await active_instance(pg_deps, minute=120)).instance_id for _ in range(12)]
    clock.set(utc(2026, 1, 1, 18, 0))
    other_pool = await create_pool(pg_logins.service("scheduler"), SCHEMA)
    try:
        stores = [pg_deps.store, PgSchedulerStore(other_pool)]
        results = await asyncio.gather(*(schedule_due(s, clock, batch_size=2) for s in stores for _ in range(3)))
    finally:
        await other_pool.close()
    created = [job for r in results for job in r.created]
    assert len(created) == len(set(created)) == 12
    for instance_id in ids:
        assert len((await handlers.list_jobs(pg_deps, instance_id, 10, call=call("ListJobs"))).jobs) == 1
        after = await handlers.get_instance(pg_deps, instance_id, call=call("GetInstance"))
        assert after.last_scheduled_on == dt.date(2026, 1, 2)


async def _listening_address(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    seen = ""
    for _ in range(500):
        seen += capsys.readouterr().out
        for line in seen.splitlines():
            if line.startswith("LISTENING scheduler "):
                return line.split()[2], seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"no LISTENING line in {seen!r}")


async def _wait_for(predicate: object, what: str) -> None:
    for _ in range(500):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_process_serves_grpc_and_events(
    pg_logins: PgLogins, local_pki: LocalPki, capsys: pytest.CaptureFixture[str]
) -> None:
    bus = InMemoryEventBus()
    stop = asyncio.Event()
    token = await create_admin_token(pg_logins.owner, "a")
    platform = PlatformSettings(
        pg_logins.service("scheduler"),
        "unused:9092",
        True,
        "file:unused",
        None,
        "none",
        tls=local_pki.tls("scheduler"),
        pg_migrate_dsn=pg_logins.owner,
    )
    settings = Settings(platform=platform, schedule_interval=0.2)
    server = asyncio.create_task(
        bootstrap.run(settings, stop, clock=SystemClock(), publisher=bus, consumer_factory=bus.consumer)
    )
    try:
        address, printed = await _listening_address(capsys)
        assert address.startswith("127.0.0.1:")
        async with local_pki.operator_channel(address, token) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            response = await stub.ActivateBackup(S.ActivateBackupRequest(account_id="a", name="n", region="r"))
            instance_id = response.instance.instance_id
            await _wait_for(lambda: bus.topics.get(INSTANCE_ACTIVATED), "instance-activated")
            enrolled = events_pb2.AgentEnrolled(
                meta=new_meta("agent-gateway", SystemClock().now()),
                instance_id=instance_id,
                hostname="h",
                agent_version="0.1.0",
            )
            await bus.publish(AGENT_ENROLLED, instance_id.encode(), enrolled.SerializeToString())

            async def status() -> int:
                return (await stub.GetInstance(S.GetInstanceRequest(instance_id=instance_id))).status

            for _ in range(500):
                if await status() == S.RUNNING_STATUS_READY:
                    break
                await asyncio.sleep(0.02)
            assert await status() == S.RUNNING_STATUS_READY
            job = await stub.RunBackupNow(S.RunBackupNowRequest(instance_id=instance_id))
            await _wait_for(lambda: bus.topics.get(JOB_REQUESTED), "job-requested")
            requested = events_pb2.JobRequested.FromString(bus.topics[JOB_REQUESTED][0][1])
            assert requested.job_id == job.job_id
            await bus.publish(JOB_UPDATED, b"k", b"\xff\xff not protobuf")  # poison: to the DLQ, not a crash
            await _wait_for(lambda: bus.topics.get(f"{JOB_UPDATED}.dlq"), "the dead-letter record")
            # the job fails: its alert goes round the bus (alert-raised) into the account's messages
            failed = events_pb2.JobUpdated(
                meta=new_meta("agent-gateway", SystemClock().now()),
                instance_id=instance_id,
                job_id=job.job_id,
                status=common_pb2.JOB_STATUS_FAILED,
                error="disk full",
                agent_version="0.1.3",  # upgraded in place since its enrollment (ADR 0045)
            )
            await bus.publish(JOB_UPDATED, instance_id.encode(), failed.SerializeToString())
            messages = alerts_pb2_grpc.AlertServiceStub(channel)

            async def listed() -> list[alerts_pb2.Message]:
                page = await messages.ListMessages(alerts_pb2.ListMessagesRequest(account_id="a"))
                return list(page.messages)

            for _ in range(500):
                if await listed():
                    break
                await asyncio.sleep(0.02)
            [message] = await listed()
            assert (message.job_id, message.title) == (job.job_id, "Backup failed: n")
            shown = await stub.GetInstance(S.GetInstanceRequest(instance_id=instance_id))
            assert shown.agent_version == "0.1.3"

            # the scheduler serves API tokens: a viewer made by the admin reads but cannot act
            tokens = auth_pb2_grpc.TokenServiceStub(channel)
            grant = auth_pb2.Grant(account_id="a", role=auth_pb2.ROLE_VIEWER)
            viewer = await tokens.CreateToken(auth_pb2.CreateTokenRequest(name="dash", grants=[grant]))
        async with local_pki.operator_channel(address, viewer.secret) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            assert (await stub.GetInstance(S.GetInstanceRequest(instance_id=instance_id))).account_id == "a"
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.PauseBackup(S.InstanceRef(instance_id=instance_id))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # every mutation above, and the refusal, reached the audit trail through the outbox and the
        # consumer of audit-recorded; reading it is for admins
        async with local_pki.operator_channel(address, token) as channel:
            trail = audit_pb2_grpc.AuditServiceStub(channel)

            async def recorded() -> dict[str, audit_pb2.AuditEvent]:
                page = await trail.ListAuditEvents(audit_pb2.ListAuditEventsRequest(account_id="a", page_size=1000))
                return {
                    e.method.rsplit("/", 1)[1]: e
                    for e in page.events
                    if instance_id in str(e) or e.resources.get("token_id") == viewer.token.token_id
                }

            for _ in range(500):
                if len(found := await recorded()) == 4:
                    break
                await asyncio.sleep(0.02)
            assert set(found) == {"ActivateBackup", "RunBackupNow", "CreateToken", "PauseBackup"}
            assert found["RunBackupNow"].resources["job_id"] == job.job_id
            assert found["ActivateBackup"].result_code == "OK" and list(found["ActivateBackup"].account_ids) == ["a"]
            assert found["PauseBackup"].result_code == "PERMISSION_DENIED"
            assert found["PauseBackup"].subject == f"token:{viewer.token.token_id}"
            # the secret part of "srt_<token id>_<secret>" (the secret itself may hold "_")
            secret_part = viewer.secret.removeprefix(f"srt_{viewer.token.token_id}_")
            assert secret_part != viewer.secret and secret_part not in str(found["CreateToken"])
        async with local_pki.operator_channel(address, viewer.secret) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as not_admin:
                await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(audit_pb2.ListAuditEventsRequest())
            assert not_admin.value.code() == grpc.StatusCode.PERMISSION_DENIED
        async with grpc.aio.insecure_channel(address) as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await scheduler_pb2_grpc.SchedulerServiceStub(plaintext).ListInstances(
                    S.ListInstancesRequest(), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)
    assert (printed + capsys.readouterr().out).count("LISTENING scheduler") == 1


# --- the audit trail (ADR 0027) ------------------------------------------------------------


def audit_record(clock: FakeClock, account: str = "acme") -> events_pb2.AuditRecorded:
    return events_pb2.AuditRecorded(
        meta=new_meta("restore", clock.now()),
        subject="token:t1",
        principal_kind="operator",
        account_ids=[account],
        method="/strongroom.restore.v1.RestoreService/CreateRestoreJob",
        verb="restore files",
        resources={"point_id": "p-1"},
        result_code="OK",
    )


async def test_an_audit_record_naming_a_nul_is_kept_with_it_shown(pg_deps: Deps, clock: FakeClock) -> None:
    account = f"acct-{random.getrandbits(32)}"
    event = audit_record(clock, account)
    event.resources["point_id"] = "p\x00-1"
    event.result_code, event.result_message = "INVALID_ARGUMENT", "point_id: bad\x00"
    await handlers.handle_audit_recorded(event, pg_deps)  # was: refused by PostgreSQL, dead-lettered
    query = {"page_size": 0, "page_token": "", "since": None, "until": None, "subject": ""}
    [kept], _ = await handlers.list_audit_events(pg_deps, account, call=call("ActivateBackup", admin(account)), **query)  # type: ignore[arg-type]
    assert kept.resources["point_id"] == "p\\0-1" and kept.result_message == "point_id: bad\\0"


async def test_the_audit_table_keeps_each_record_once_and_refuses_changes(
    pg_deps: Deps, pool: asyncpg.Pool, clock: FakeClock, pg_logins: PgLogins
) -> None:
    account = f"acct-{random.getrandbits(32)}"
    event = audit_record(clock, account)
    await handlers.handle_audit_recorded(event, pg_deps)
    await handlers.handle_audit_recorded(event, pg_deps)  # redelivered: claimed already
    query = {"page_size": 0, "page_token": "", "since": None, "until": None, "subject": ""}
    events, _ = await handlers.list_audit_events(pg_deps, account, call=call("ActivateBackup", admin(account)), **query)  # type: ignore[arg-type]
    assert events == [event]
    statements = (
        "UPDATE scheduler.audit_events SET result_code = 'NOT_FOUND' WHERE event_id = $1",
        "DELETE FROM scheduler.audit_events WHERE event_id = $1",
    )
    # The scheduler's role holds no such privilege (ADR 0031) ...
    for statement in statements:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for table audit_events"):
            await pool.execute(statement, event.meta.event_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for table audit_events"):
        await pool.execute("TRUNCATE audit_events")
    # ... and the triggers refuse even the table's owner.
    owner = await asyncpg.connect(pg_logins.owner)
    try:
        for statement in statements:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await owner.execute(statement, event.meta.event_id)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only: TRUNCATE"):
            await owner.execute("TRUNCATE scheduler.audit_events")
    finally:
        await owner.close()
    assert await pool.fetchval("SELECT result_code FROM audit_events WHERE event_id = $1", event.meta.event_id) == "OK"


async def test_the_audit_trail_pages_in_postgres(pg_deps: Deps, clock: FakeClock) -> None:
    account = f"acct-{random.getrandbits(32)}"
    ids = []
    for _ in range(5):
        clock.advance(seconds=1)
        event = audit_record(clock, account)
        await handlers.handle_audit_recorded(event, pg_deps)
        ids.append(event.meta.event_id)
    listed, token = [], ""
    while True:
        page, token = await handlers.list_audit_events(
            pg_deps,
            account,
            page_size=2,
            page_token=token,
            since=None,
            until=None,
            subject="",
            call=call("ActivateBackup", admin(account)),
        )
        listed += [e.meta.event_id for e in page]
        if not token:
            break
    assert listed == list(reversed(ids))


async def test_a_mutation_commits_with_its_audit_record_or_not_at_all(
    pg_deps: Deps, pool: asyncpg.Pool, clock: FakeClock, pg_logins: PgLogins
) -> None:
    """Effect and record share one transaction: when the record cannot be written, nothing happened."""
    instance = await active_instance(pg_deps)
    pause = call("PauseBackup")
    sink = InMemoryAuditSink(clock, producer="scheduler")

    async def pause_audited() -> audit.CallAudit:
        state, token = audit.begin(sink, pause.method, pause.verb, S.InstanceRef(instance_id=instance.instance_id))
        state.call = pause
        call_token = set_current_call(pause)
        try:
            await handlers.pause_backup(pg_deps, instance.instance_id, call=pause)
        finally:
            reset_current_call(call_token)
            audit.end(token)
        return state

    async def audit_rows() -> list[events_pb2.AuditRecorded]:
        rows = await pool.fetch("SELECT payload FROM outbox WHERE topic = $1", AUDIT_RECORDED)
        found = [events_pb2.AuditRecorded.FromString(bytes(r["payload"])) for r in rows]
        return [e for e in found if e.resources.get("instance_id") == instance.instance_id]

    # the audit insert fails inside the database (as a full disk or a bug would make it); the
    # trigger is the owner's to create
    owner = await asyncpg.connect(pg_logins.owner)
    await owner.execute(
        "CREATE OR REPLACE FUNCTION scheduler.refuse_audit_rows() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.topic = 'audit-recorded' THEN RAISE EXCEPTION 'audit insert failed'; END IF; RETURN NEW; END $$;"
        " CREATE TRIGGER refuse_audit BEFORE INSERT ON scheduler.outbox"
        " FOR EACH ROW EXECUTE FUNCTION scheduler.refuse_audit_rows()"
    )
    try:
        with pytest.raises(asyncpg.RaiseError, match="audit insert failed"):
            await pause_audited()
    finally:
        await owner.execute(
            "DROP TRIGGER refuse_audit ON scheduler.outbox; DROP FUNCTION scheduler.refuse_audit_rows()"
        )
        await owner.close()
    got = await handlers.get_instance(pg_deps, instance.instance_id, call=call("GetInstance"))
    assert not got.paused, "the effect committed without its audit record"
    assert await audit_rows() == []

    state = await pause_audited()
    got = await handlers.get_instance(pg_deps, instance.instance_id, call=call("GetInstance"))
    assert got.paused and state.recorded == 1 and sink.events == []
    [record] = await audit_rows()
    assert (record.result_code, list(record.account_ids), record.subject) == ("OK", ["acme"], pause.principal.subject)


async def test_instances_page_in_postgres_by_activation_then_id(pg_deps: Deps, clock: FakeClock) -> None:
    ids = []
    for n in range(5):
        ids.append((await active_instance(pg_deps)).instance_id)
        if n % 2:
            clock.advance(1)  # pairs share an activation time: the id breaks the tie
    expected = [
        i.instance_id
        for i in (await handlers.list_instances(pg_deps, "acme", "", call=call("ListInstances"))).instances
    ]
    assert sorted(expected) == sorted(ids)
    seen: list[str] = []
    token = ""
    while True:
        page = await handlers.list_instances(
            pg_deps, "acme", "", page_size=2, page_token=token, call=call("ListInstances")
        )
        assert len(page.instances) <= 2
        seen += [i.instance_id for i in page.instances]
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert seen == expected


async def test_jobs_page_in_postgres_newest_first_ties_in_insertion_order(pg_deps: Deps, clock: FakeClock) -> None:
    instance = await active_instance(pg_deps)
    ids = await finished_jobs(pg_deps, clock.advance, instance.instance_id, 7)
    pages = await every_job_page(pg_deps, instance.instance_id, 2)
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [j for p in pages for j in p] == ids[::-1]
    assert await every_job_page(pg_deps, instance.instance_id, 0) == [ids[::-1]]


async def test_inventory_round_trip_and_one_instance_per_host(
    pg_deps: Deps, pool: asyncpg.Pool, clock: FakeClock
) -> None:
    devices = [BlockDevice("/dev/vda", 40 << 30), BlockDevice("/dev/vdb", 1)]
    [registered] = await handlers.register_instances(
        pg_deps,
        "acme",
        [InventoryInput(host_id="m-1", name="web", region="r", os="linux", block_devices=devices)],
        call=call("RegisterInstances"),
    )
    got = await handlers.get_instance(pg_deps, registered.instance_id, call=call("GetInstance"))
    assert (got.host_id, got.os, got.block_devices, got.activated) == ("m-1", "linux", devices, False)
    assert got.status(clock.now()) == S.RUNNING_STATUS_NOT_ACTIVATED
    await handlers.activate_backup(
        pg_deps, account_id="acme", name="", region="", settings=None, call=call("ActivateBackup"), host_id="m-1"
    )
    with pytest.raises(AlreadyExists, match="already activated"):
        await handlers.activate_backup(
            pg_deps, account_id="acme", name="", region="", settings=None, call=call("ActivateBackup"), host_id="m-1"
        )
    # The database itself refuses a second instance of the host (two activations racing).
    twin = dataclasses.replace(got, instance_id="twin")
    with pytest.raises(AlreadyExists, match="host m-1 already has an instance"):
        async with pg_deps.store.transaction() as tx:
            await tx.insert_instance(twin)
    # The scheduler's role may not delete instances (the inventory keeps them).
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pool.execute("DELETE FROM instances")


async def test_a_capacity_mismatch_is_alerted_once_on_postgres(pg_deps: Deps, pool: asyncpg.Pool) -> None:
    devices = [BlockDevice("/dev/vda", 40 << 30)]
    [registered] = await handlers.register_instances(
        pg_deps,
        "acme",
        [InventoryInput(host_id="m-1", name="web", region="r", os="linux", block_devices=devices)],
        call=call("RegisterInstances"),
    )
    await handlers.activate_backup(
        pg_deps, account_id="acme", name="", region="", settings=None, call=call("ActivateBackup"), host_id="m-1"
    )
    for _ in range(2):  # enrolled twice with the same report
        event = events_pb2.AgentEnrolled(
            meta=new_meta("agent-gateway", pg_deps.clock.now()),
            account_id="acme",
            instance_id=registered.instance_id,
            hostname="h",
            host_id="m-1",
            block_devices=[common_pb2.BlockDevice(device="/dev/vda", size_bytes=8 << 30)],
        )
        await handlers.handle_agent_enrolled(event, pg_deps)
    got = await handlers.get_instance(pg_deps, registered.instance_id, call=call("GetInstance"))
    assert (got.reported_capacity_bytes, got.capacity_mismatch_noted) == (8 << 30, f"{40 << 30}:{8 << 30}")
    alerts = [
        events_pb2.AlertRaised.FromString(bytes(r["payload"]))
        for r in await pool.fetch("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id", ALERT_RAISED)
    ]
    assert [a.kind for a in alerts] == [events_pb2.ALERT_KIND_CAPACITY_MISMATCH]


async def test_preparation_failure_is_published_once_on_postgres(
    pg_deps: Deps, pool: asyncpg.Pool, clock: FakeClock
) -> None:
    instance, _ = await handlers.activate_backup(
        pg_deps, account_id="acme", name="web", region="r", settings=None, call=call("ActivateBackup")
    )
    clock.advance(minutes=31)
    assert (await note_preparation_failures(pg_deps.store, clock)).failed == [instance.instance_id]
    assert (await note_preparation_failures(pg_deps.store, clock)).failed == []
    payloads = await pool.fetch("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id", INSTANCE_STATUS_CHANGED)
    last = events_pb2.InstanceStatusChanged.FromString(bytes(payloads[-1]["payload"]))
    assert last.status == S.RUNNING_STATUS_PREPARATION_FAILED and "did not enroll" in last.error


async def test_a_stale_etag_changes_nothing(pg_deps: Deps) -> None:
    await check_a_stale_etag_changes_nothing(pg_deps)
