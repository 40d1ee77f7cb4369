"""Fleet simulator (issue 14): N simulated agents against 2 replicas of every service, one daily backup each.

    uv run python bench/fleet.py --instances 1000 [--window-minutes 5] [--kill] [--out FILE]

What it does, in order (method and the meaning of each figure: ``bench/README.md``, "Fleet"):

1. Starts PostgreSQL, Apache Kafka (KRaft) and versitygw (``strongroom_servers``), the five services
   with ``strongroom_cli.stack.Stack`` (replica 1) and a second replica of each (``_fleet_stack``);
   schedule zone UTC, ``STRONGROOM_SCHEDULE_INTERVAL`` ``--schedule-interval`` (default 2 s).
2. Activates N instances (``ActivateBackup``, ``--per-account`` per account, daily start minute
   12 hours away so nothing fires yet) with ``--concurrency`` calls in flight.
3. Starts ``--workers`` processes of simulated agents (``_fleet_agents.py``), agent i enrolling at
   gateway replica i mod 2, and waits until every one holds a session.
4. Idle phase (``--idle-seconds``): every session connected, no job: PostgreSQL commits/s and the
   gateways' CPU (the idle-session cost).
5. Compressed window: ``UpdateSettings`` moves each instance's daily start minute to one of the
   next ``--window-minutes`` minutes (instance i: the (i mod W)-th), so the scheduler's own daily
   schedule creates the jobs; the agents take them, upload a small delta and commit.
   ``--kill``: once ``--kill-at`` of the jobs finished, one replica of each service is killed with
   SIGKILL and restarted.
6. Waits until every instance's job is final and its point browsable, then reads the databases
   and Kafka and prints the table (``--out``: also as markdown).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fleet_costs import ROWS_WRITTEN_SQL, SCHEMA_BYTES_SQL, S3Requests, rows_delta, window_lead_seconds
from _fleet_report import load_average, render
from _fleet_stack import Replicas, Tracked, rss_bytes
from _latency import percentile
from aiokafka import AIOKafkaConsumer
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from strongroom_cli.stack import AGENTS, Stack, operator_channel
from strongroom_cli.standalone import provision_database
from strongroom_platform.admin import create_admin_token
from strongroom_platform.certs import CA_CERT_FILE, spki_sha256
from strongroom_platform.events import TOPIC_MESSAGES
from strongroom_servers.kafka import LocalKafka
from strongroom_servers.postgres import LocalPostgres
from strongroom_servers.s3 import LocalVersityGW

HERE = Path(__file__).resolve().parent
FINAL = (4, 5, 6, 8, 9)  # JobStatus COMPLETE, PARTIAL_COMPLETE, FAILED, CANCELED, EXPIRED
COMPLETE = 4
SCHEMAS = ("scheduler", "catalog", "billing", "gateway", "restore")
# Event lag is measured on these topics: activation reaching the other services, a job reaching the
# gateway (the first hop of job delivery), a point reaching the catalog, job progress reaching the scheduler.
LAG_TOPICS = ("instance-activated", "job-requested", "point-created", "job-updated")


@dataclass
class Observed:
    """What the simulated agents reported (wall-clock seconds)."""

    enrolled: dict[str, float] = field(default_factory=dict)
    session_at: dict[str, str] = field(default_factory=dict)  # instance id -> gateway mTLS address
    connections: Counter[str] = field(default_factory=Counter)
    jobs: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # job id -> receptions
    job_instance: dict[str, str] = field(default_factory=dict)
    commits: dict[str, float] = field(default_factory=dict)  # point id -> commit returned
    finished: Counter[str] = field(default_factory=Counter)  # job id -> finished reports
    errors: list[str] = field(default_factory=list)

    def take(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        kind, t = event.get("e"), event.get("t", 0.0)
        if kind == "enrolled":
            self.enrolled[event["instance"]] = t
            self.session_at[event["instance"]] = event.get("gateway", "")
        elif kind == "connected":
            self.connections[event["instance"]] += 1
        elif kind == "job":
            self.jobs[event["job"]].append(t)
            self.job_instance[event["job"]] = event["instance"]
        elif kind == "commit":
            self.commits[event["point"]] = t
        elif kind == "finished":
            self.finished[event["job"]] += 1
        elif kind == "error":
            self.errors.append(f"{event.get('name')}: {event.get('error')}")


@dataclass
class Fleet:
    args: argparse.Namespace
    work: Path
    servers: list[object] = field(default_factory=list)
    observed: Observed = field(default_factory=Observed)
    workers: list[asyncio.subprocess.Process] = field(default_factory=list)
    tracked: dict[str, Tracked] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)  # 1-minute load average at each progress line
    replicas: Replicas | None = None
    instances: list[tuple[str, str, str]] = field(default_factory=list)  # instance id, account, token

    # ---------------------------------------------------------------- setup

    async def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.pg = LocalPostgres(None, self.work / "postgres" / "data")
        self.kafka = LocalKafka(self.work / "kafka")
        s3 = LocalVersityGW(self.work / "s3")
        loop = asyncio.get_running_loop()
        # versitygw logs every request here (its own setting, read from its environment): S3 requests per job.
        self.s3_requests = S3Requests(self.work / "s3-access.log")
        for server in (self.pg, self.kafka, s3):
            if server is s3:
                os.environ["VGW_ACCESS_LOG"] = str(self.s3_requests.log)
            try:
                await loop.run_in_executor(None, server.start)
            finally:
                os.environ.pop("VGW_ACCESS_LOG", None)
            self.servers.append(server)
        owner, databases = await provision_database(self.pg.dsn, clock_offset=dt.timedelta(0))
        env = dict(os.environ)
        env.pop("STRONGROOM_PG_DSN", None)
        env.update(
            STRONGROOM_PG_MIGRATE_DSN=owner,
            STRONGROOM_KAFKA_BOOTSTRAP=self.kafka.bootstrap,
            STRONGROOM_OBJECT_STORE="s3",
            STRONGROOM_S3_ENDPOINT=s3.endpoint,
            STRONGROOM_S3_ACCESS_KEY=s3.access_key,
            STRONGROOM_S3_SECRET_KEY=s3.secret_key,
            STRONGROOM_S3_SECURE="0",
            STRONGROOM_S3_BUCKET=f"strongroom-{uuid.uuid4().hex[:8]}",
            STRONGROOM_MASTER_KEY_FILE=str(self.work / "master.key"),
            STRONGROOM_ZONE="UTC",
            STRONGROOM_SCHEDULE_INTERVAL=str(self.args.schedule_interval),
            STRONGROOM_LOG_LEVEL="WARNING",
        )
        self.stack = Stack()
        tls_dir = self.work / "tls"
        await self.stack.start(env, self.work / "logs", tls_dir=tls_dir, databases=databases)
        self.replicas = Replicas(self.stack, env, self.work / "logs")
        self.replicas.adopt_stack()
        if self.args.replicas >= 2:
            await self.replicas.start_second()
        n_accounts = math.ceil(self.args.instances / self.args.per_account)
        self.accounts = [f"fleet-{k:05d}-{uuid.uuid4().hex[:6]}" for k in range(n_accounts)]
        token = await create_admin_token(owner, self.accounts, name="fleet")
        self.ca_file = tls_dir / CA_CERT_FILE
        self.channel = operator_channel(self.stack.addresses["scheduler"], ca_file=self.ca_file, token=token)
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)
        self.db = await asyncpg.connect(owner)  # the schemas' owner reads every schema
        self.tracked = {r.label: Tracked(r.label, r.process.process.pid) for r in self.replicas.replicas}
        for label, server, tree in (
            ("postgresql", self.pg, True),
            ("kafka", self.kafka, False),
            ("versitygw", s3, False),
        ):
            if server.pid is not None:
                self.tracked[label] = Tracked(label, server.pid, tree=tree)

    async def stop(self) -> None:
        for worker in self.workers:
            if worker.returncode is None:
                worker.terminate()
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.wait(), 20)
            except TimeoutError:
                worker.kill()
        if getattr(self, "db", None) is not None:
            await self.db.close()
        if getattr(self, "channel", None) is not None:
            await self.channel.close()
        if self.replicas is not None:
            await self.replicas.stop_extra()
        if getattr(self, "stack", None) is not None:
            await self.stack.stop()
        for server in reversed(self.servers):
            server.stop()  # type: ignore[attr-defined]

    # ---------------------------------------------------------------- phases

    async def _bounded(self, calls: list, concurrency: int, what: str) -> list:  # noqa: ANN001
        gate = asyncio.Semaphore(concurrency)
        done = 0

        async def one(call):  # noqa: ANN001, ANN202
            nonlocal done
            async with gate:
                result = await call()
            done += 1
            return result

        async def report() -> None:
            while True:
                await asyncio.sleep(self.args.progress_seconds)
                self.progress(f"{what}: {done}/{len(calls)}")

        reporter = asyncio.create_task(report())
        try:
            return await asyncio.gather(*(one(c) for c in calls))
        finally:
            reporter.cancel()

    async def activate(self) -> None:
        far = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=12)).time()
        minute = far.hour * 60 + far.minute
        per = self.args.per_account

        def call(i: int):  # noqa: ANN202
            async def activate_one() -> tuple[str, str, str]:
                account = self.accounts[i // per]
                response = await self.scheduler.ActivateBackup(
                    scheduler_pb2.ActivateBackupRequest(
                        account_id=account,
                        name=f"sim-{i:06d}",
                        region="local",
                        settings=scheduler_pb2.BackupSettings(
                            daily_start_minute=minute, keep_latest_version=True, roots=["/"]
                        ),
                        has_settings=True,
                    )
                )
                return response.instance.instance_id, account, response.enrollment_token

            return activate_one

        started = time.perf_counter()
        self.instances = await self._bounded(
            [call(i) for i in range(self.args.instances)], self.args.concurrency, "activations"
        )
        elapsed = time.perf_counter() - started
        self.figures["activation"] = (len(self.instances), elapsed)
        self.progress(f"activated {len(self.instances)} instances in {elapsed:.1f} s")

    async def start_agents(self) -> None:
        assert self.replicas is not None
        gateways = [r.listen["gateway"] for r in self.replicas.of("gateway")]
        agents = [
            {"token": token, "gateway": gateways[i % len(gateways)], "account": account, "name": f"sim-{i:06d}"}
            for i, (_, account, token) in enumerate(self.instances)
        ]
        ca_pem = self.ca_file.read_text()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.rss_before_agents = self._rss_of("gateway")
        self.s3_requests.mark()
        started = time.perf_counter()
        for w in range(self.args.workers):
            spec = {
                "ca_pem": ca_pem,
                "pins": [spki_sha256(ca_pem.encode())],
                "fresh": self.args.fresh_chunks,
                "common": self.args.common_chunks,
                "chunk_bytes": self.args.chunk_bytes,
                "enroll_concurrency": self.args.enroll_concurrency,
                "agents": agents[w :: self.args.workers],
            }
            path = self.work / f"agents-{w}.json"
            path.write_text(json.dumps(spec))
            log = (self.work / "logs" / f"sim-agents-{w}.log").open("ab")
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(HERE / "_fleet_agents.py"),
                str(path),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,  # fmt: skip
            )
            self.workers.append(proc)
            self.tracked[f"sim-agents-{w}"] = Tracked(f"sim-agents-{w}", proc.pid)
            asyncio.create_task(self._pump(proc))
        n = len(self.instances)
        within = self.args.enroll_timeout or max(900.0, n / 5.0)  # at least 5 sessions/s
        await self._until(
            lambda: len(self.observed.connections) + len(self.observed.errors) >= n,
            within,
            "sessions",
            lambda: (
                f"{len(self.observed.enrolled)} enrolled, {len(self.observed.connections)} sessions,"
                f" {len(self.observed.errors)} errors of {n}"
            ),
        )
        elapsed = time.perf_counter() - started
        self.figures["enrollment"] = (len(self.observed.enrolled), elapsed)
        self.figures["s3_enrollment"] = self.s3_requests.since_mark()
        up, errors = len(self.observed.connections), len(self.observed.errors)
        self.progress(f"{up} sessions up in {elapsed:.1f} s; {errors} errors")
        for error in self.observed.errors[:5]:
            print("  ", error)

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self.observed.take(line)

    async def _until(self, condition, within: float, what: str, status=None) -> None:  # noqa: ANN001
        deadline = time.monotonic() + within
        next_progress = time.monotonic() + self.args.progress_seconds
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")
            if status is not None and time.monotonic() >= next_progress:
                next_progress += self.args.progress_seconds
                self.progress(f"waiting for {what}: {status()}")
            await asyncio.sleep(0.5)

    def progress(self, message: str) -> None:
        """One progress line on stdout: UTC time, 1-minute load average, message."""
        load = os.getloadavg()[0]
        self.loads.append(load)
        print(f"[{dt.datetime.now(dt.UTC):%H:%M:%S} load {load:.2f}] {message}", flush=True)

    async def xact_commits(self) -> int:
        return int(await self.db.fetchval("SELECT sum(xact_commit) FROM pg_stat_database"))

    def _sample(self) -> None:
        for t in self.tracked.values():
            t.sample()

    def _rss_of(self, prefix: str) -> dict[str, int]:
        """Current RSS (bytes) of the tracked processes whose label starts with ``prefix``."""
        out = {}
        for label, t in self.tracked.items():
            if label.startswith(prefix):
                try:
                    out[label] = rss_bytes(t.pid)
                except OSError:
                    continue
        return out

    async def quiet(self, what: str) -> dict[str, object]:
        """PostgreSQL commits/s and the gateways' cores with no job running, measured over
        ``--idle-seconds`` after ``--settle-seconds`` (for the events of the phase before to be
        processed): ``what`` is ``baseline`` (no session yet) or ``idle`` (every session up)."""
        c0, t0 = await self.xact_commits(), time.perf_counter()
        await asyncio.sleep(self.args.settle_seconds)
        settle_rate = (await self.xact_commits() - c0) / max(time.perf_counter() - t0, 1e-9)
        # Then until two 5 s commit rates in a row agree (within 20% or 10/s): the phase's tail is done.
        rates: list[float] = []
        while time.perf_counter() - t0 < self.args.settle_max:
            c, t = await self.xact_commits(), time.perf_counter()
            await asyncio.sleep(5.0)
            rates.append((await self.xact_commits() - c) / (time.perf_counter() - t))
            if len(rates) >= 2 and abs(rates[-1] - rates[-2]) <= max(10.0, 0.2 * rates[-2]):
                break
        settle = time.perf_counter() - t0
        self.progress(
            f"{what}: settled {settle:.0f} s ({settle_rate:.1f} commits/s at first,"
            f" then {', '.join(f'{r:.0f}' for r in rates)})"
        )
        for t in self.tracked.values():
            t.start()
        c0, t0 = await self.xact_commits(), time.perf_counter()
        await asyncio.sleep(self.args.idle_seconds)
        c1, wall = await self.xact_commits(), time.perf_counter() - t0
        self._sample()
        gateways = {k: v.cpu / wall for k, v in self.tracked.items() if k.startswith("gateway")}
        figure = {"seconds": wall, "commits_per_s": (c1 - c0) / wall, "gateway_cores": gateways, "settle": settle_rate}
        self.figures[what] = figure
        cores = ", ".join(f"{k} {v:.3f}" for k, v in sorted(gateways.items()))
        self.progress(f"{what}: {(c1 - c0) / wall:.1f} commits/s over {wall:.0f} s; gateway cores {cores}")
        return figure

    async def idle(self) -> None:
        """Every session up, no job: what idle sessions cost, against the baseline without sessions."""
        await self.quiet("idle")
        self.figures["rss_sessions"] = (self.rss_before_agents, self._rss_of("gateway"), self._rss_of("sim-agents"))

    async def window(self) -> None:
        n_act, t_act = self.figures["activation"]  # type: ignore[misc]
        width = self.args.window_minutes
        lead = window_lead_seconds(len(self.instances), width, n_act / t_act, minimum=self.args.window_lead)
        now = dt.datetime.now(dt.UTC)
        # The first slot: a whole minute at least ``lead`` ahead, so every update lands before its slot.
        first = now.hour * 60 + now.minute + math.ceil((now.second + lead) / 60)
        minutes = [(first + i % width) % 1440 for i in range(len(self.instances))]
        self.progress(f"updating {len(self.instances)} start minutes; window from minute {first} (lead {lead:.0f} s)")

        def call(instance_id: str, minute: int):  # noqa: ANN202
            async def update() -> None:
                await self.scheduler.UpdateSettings(
                    scheduler_pb2.UpdateSettingsRequest(
                        instance_id=instance_id,
                        settings=scheduler_pb2.BackupSettings(daily_start_minute=minute),
                        update_mask=["daily_start_minute"],
                    )
                )

            return update

        # In slot order: the first minute's instances first (see ``window_lead_seconds``).
        pairs = sorted(zip(self.instances, minutes, strict=True), key=lambda p: (p[1] - first) % 1440)
        started = time.perf_counter()
        await self._bounded([call(iid, m) for (iid, _, _), m in pairs], self.args.concurrency, "updates")
        self.figures["updates"] = (len(pairs), time.perf_counter() - started)
        window_start = dt.datetime.combine(now.date(), dt.time(0), tzinfo=dt.UTC) + dt.timedelta(minutes=first)
        window_end = window_start + dt.timedelta(minutes=width)
        outside = await self.db.fetchval(
            "SELECT count(*) FROM scheduler.instances WHERE instance_id = ANY($1)"
            " AND NOT (next_backup_at >= $2 AND next_backup_at < $3)",
            [iid for iid, _, _ in self.instances],
            window_start,
            window_end,
        )
        if outside:
            self.notes.append(f"{outside} instances' next slot is outside the window (an update landed late)")
        lead = (window_start - dt.datetime.now(dt.UTC)).total_seconds()
        self.progress(
            f"{len(pairs)} updates in {self.figures['updates'][1]:.1f} s; {outside} slots outside the window;"
            f" window: {width} min from {window_start:%H:%M} UTC (in {lead:.0f} s)"
        )
        await asyncio.sleep(max(0.0, lead - 1.0))  # CPU and commits count from the window's first slot
        for t in self.tracked.values():
            t.start()
        self.window_t0 = time.time()
        self.window_from = window_start
        self.s3_requests.mark()
        self.catalog_bytes0 = int(await self.db.fetchval(SCHEMA_BYTES_SQL, "catalog"))
        rows0 = {r["schemaname"]: int(r["rows"]) for r in await self.db.fetch(ROWS_WRITTEN_SQL)}
        c0 = await self.xact_commits()
        n = len(self.instances)
        killer: asyncio.Task[None] | None = None
        seen: dict[str, float] = {}
        commit_samples: list[tuple[float, int]] = [(time.time(), c0)]
        deadline = time.monotonic() + width * 60 + self.args.timeout
        next_progress = time.monotonic() + self.args.progress_seconds
        while True:
            await asyncio.sleep(1.0)
            self._sample()
            # The committed points not seen browsable yet, by id: polling by ``seq > last`` missed
            # an outcome whose transaction committed after one with a higher seq (the run waited
            # for it until the timeout).
            waiting = [p for p in self.observed.commits if p not in seen]
            rows = await self.db.fetch(
                "SELECT DISTINCT point_id FROM catalog.point_index_outcomes WHERE browsable AND point_id = ANY($1)",
                waiting,
            )
            t = time.time()
            for row in rows:
                seen.setdefault(row["point_id"], t)
            commit_samples.append((t, await self.xact_commits()))
            done = await self.db.fetchval(
                "SELECT count(DISTINCT instance_id) FROM scheduler.jobs WHERE status = ANY($1::smallint[])", list(FINAL)
            )
            if time.monotonic() >= next_progress:
                next_progress += self.args.progress_seconds
                a, b = commit_samples[-2], commit_samples[-1]
                busiest = max(self.tracked.values(), key=lambda t: t.cpu)
                backends = await self.db.fetchval(
                    "SELECT sum(numbackends) FROM pg_stat_database"  # every role's; pg_stat_activity hides them
                )
                self.pg_backends = max(getattr(self, "pg_backends", 0), int(backends))
                self.progress(
                    f"window +{t - self.window_t0:.0f} s: {done}/{n} jobs final, {len(self.observed.jobs)} delivered,"
                    f" {len(self.observed.commits)} committed, {len(seen)} browsable;"
                    f" {(b[1] - a[1]) / max(b[0] - a[0], 1e-9):.0f} commits/s;"
                    f" busiest {busiest.label} {busiest.cpu:.0f} CPU s; {backends} PostgreSQL connections"
                )
            if self.args.kill and killer is None and done >= self.args.kill_at * n:
                killer = asyncio.create_task(self.kill())  # sampling goes on while they restart
            if done >= n and all(p in seen for p in self.observed.commits):
                break
            if time.monotonic() > deadline:
                self.notes.append(f"timed out: {done}/{n} jobs final, {len(seen)} points browsable")
                break
        if killer is not None:
            await killer
        self._sample()
        self.window_t1 = time.time()
        self.browsable = seen
        self.commit_samples = commit_samples
        self.figures["s3_window"] = self.s3_requests.since_mark()
        self.figures["catalog_bytes"] = int(await self.db.fetchval(SCHEMA_BYTES_SQL, "catalog")) - self.catalog_bytes0
        await asyncio.sleep(1.0)  # table statistics are flushed about every 0.5 s
        rows1 = {r["schemaname"]: int(r["rows"]) for r in await self.db.fetch(ROWS_WRITTEN_SQL)}
        self.figures["rows_written"] = rows_delta(rows0, rows1)

    async def kill(self) -> None:
        """SIGKILL replica ``--kill-replica`` of every service at once; restart them on their listeners."""
        assert self.replicas is not None
        victims = [r for r in self.replicas.replicas if r.index == self.args.kill_replica]
        at, t0 = time.time() - self.window_t0, time.perf_counter()
        started = await self.replicas.kill_and_restart(victims)
        for old, again in zip(victims, started, strict=True):
            self.tracked[old.label].replaced_by(again.process.process.pid)
        self.notes.append(
            f"kill -9 {', '.join(f'{v.label} (pid {v.process.process.pid})' for v in victims)} at {at:.0f} s into"
            f" the window, when {self.args.kill_at:.0%} of the jobs were final; all serving again"
            f" {time.perf_counter() - t0:.1f} s later"
        )
        print(self.notes[-1], flush=True)

    # ---------------------------------------------------------------- results

    async def _occurred(self, topic: str) -> dict[str, float]:
        """Every record of ``topic`` read back from Kafka: event id -> ``meta.occurred_at``."""
        message = TOPIC_MESSAGES[topic]
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.kafka.bootstrap,
            group_id=None,  # no group: every partition, nothing committed
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        occurred: dict[str, float] = {}
        try:
            deadline = time.monotonic() + 30
            for _ in range(150):  # the partitions are assigned once the metadata arrives
                if consumer.assignment():
                    break
                await asyncio.sleep(0.2)
            tps = list(consumer.assignment())
            ends = await consumer.end_offsets(tps)
            while time.monotonic() < deadline + 240:  # tens of thousands of records at 10,000 instances
                if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                    break
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        meta = message.FromString(record.value).meta  # type: ignore[attr-defined]
                        occurred[meta.event_id] = meta.occurred_at.ToDatetime(dt.UTC).timestamp()
        finally:
            await consumer.stop()
        return occurred

    async def event_lag(self) -> dict[str, tuple[int, float, float, float]]:
        """Per topic and consumer (schema: inbox key): lag from the event's occurred_at to its claim."""
        out = {}
        for topic in LAG_TOPICS:
            occurred = await self._occurred(topic)
            ids = list(occurred)
            for schema in SCHEMAS:
                rows = await self.db.fetch(
                    f"SELECT consumer, event_id, processed_at FROM {schema}.processed_events WHERE event_id = ANY($1)",
                    ids,
                )
                by_consumer: dict[str, list[tuple[float, float]]] = defaultdict(list)
                for row in rows:
                    by_consumer[row["consumer"]].append((occurred[row["event_id"]], row["processed_at"].timestamp()))
                for name, pairs in by_consumer.items():
                    lags = [seen - at for at, seen in pairs]
                    last = max(seen for _, seen in pairs) - max(at for at, _ in pairs)
                    p50, p95 = percentile(lags, 0.5), percentile(lags, 0.95)
                    out[f"{topic} → {schema}: {name}"] = (len(lags), p50, p95, last)
        return out

    async def collect(self) -> None:
        rows = await self.db.fetch(
            "SELECT job_id, instance_id, status, trigger, created_at, finished_at FROM scheduler.jobs"
        )
        ids = {iid for iid, _, _ in self.instances}
        per_instance = Counter(r["instance_id"] for r in rows if r["instance_id"] in ids)
        statuses = Counter(r["status"] for r in rows)
        created = {r["job_id"]: r["created_at"].timestamp() for r in rows}
        delivery = [min(ts) - created[j] for j, ts in self.observed.jobs.items() if j in created]
        duplicates = sum(1 for ts in self.observed.jobs.values() if len(ts) > 1)
        order = sorted(created, key=created.__getitem__)
        decile = max(1, len(order) // 10)
        first_dec = [min(self.observed.jobs[j]) - created[j] for j in order[:decile] if j in self.observed.jobs]
        last_dec = [min(self.observed.jobs[j]) - created[j] for j in order[-decile:] if j in self.observed.jobs]
        finished = [r["finished_at"].timestamp() for r in rows if r["finished_at"] is not None]
        complete = sum(1 for r in rows if r["status"] == COMPLETE)
        span = (max(finished) - min(created.values())) if finished and created else float("nan")
        index_lag = [self.browsable[p] - t for p, t in self.observed.commits.items() if p in self.browsable]
        points = await self.db.fetch("SELECT instance_id, count(*) AS n FROM gateway.points GROUP BY instance_id")
        point_counts = Counter(r["n"] for r in points if r["instance_id"] in ids)
        wall = self.window_t1 - self.window_t0
        c0, c1 = self.commit_samples[0][1], self.commit_samples[-1][1]
        rates = [
            (b[1] - a[1]) / (b[0] - a[0])
            for a, b in zip(self.commit_samples, self.commit_samples[1:], strict=False)
            if b[0] > a[0]
        ]
        self.figures.update(
            jobs=len(rows),
            per_instance=Counter(per_instance.values()),
            instances_without_job=len(ids - set(per_instance)),
            statuses=statuses,
            complete=complete,
            delivery=delivery,
            delivery_first=first_dec,
            delivery_last=last_dec,
            delivery_by_gateway=self._delivery_by_gateway(created),
            duplicate_deliveries=duplicates,
            finished_reports=Counter(self.observed.finished.values()),
            jobs_per_hour=complete / span * 3600 if span == span and span > 0 else float("nan"),
            span=span,
            index_lag=index_lag,
            point_counts=point_counts,
            window_wall=wall,
            commits_per_s=(c1 - c0) / wall,
            commits_per_s_peak=max(rates) if rates else float("nan"),
            reconnects=sum(max(0, c - 1) for c in self.observed.connections.values()),
        )
        try:
            self.figures["event_lag"] = await self.event_lag()
        except Exception as exc:  # the other figures still stand
            self.figures["event_lag"] = {}
            self.notes.append(f"event lag not measured: {type(exc).__name__}: {exc}")

    def _delivery_by_gateway(self, created: dict[str, float]) -> dict[str, list[float]]:
        """Job delivery split by the gateway replica holding the agent's session."""
        assert self.replicas is not None
        label = {r.listen.get(AGENTS, ""): r.label for r in self.replicas.of("gateway")}
        out: dict[str, list[float]] = defaultdict(list)
        for job, times in self.observed.jobs.items():
            if job in created:
                at = self.observed.session_at.get(self.observed.job_instance[job], "")
                out[label.get(at, at or "?")].append(min(times) - created[job])
        return out


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


async def run(args: argparse.Namespace) -> str:
    work = args.work / f"fleet-{uuid.uuid4().hex[:6]}"
    fleet = Fleet(args, work)
    fleet.load0 = load_average()  # type: ignore[attr-defined]
    fleet.commit = _git("rev-parse", "--short", "HEAD") + (" (modified)" if _git("status", "--porcelain", ".") else "")  # type: ignore[attr-defined]
    try:
        await fleet.start()
        await fleet.activate()
        await fleet.quiet("baseline")
        await fleet.start_agents()
        await fleet.idle()
        await fleet.window()
        await fleet.collect()
        return render(fleet)
    finally:
        await fleet.stop()
        print(f"work dir (logs): {work}", file=sys.stderr)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=100)
    p.add_argument("--replicas", type=int, default=2, choices=[1, 2])
    p.add_argument("--per-account", type=int, default=100, help="instances per account")
    p.add_argument("--window-minutes", type=int, default=5, help="daily start minutes spread over this many")
    p.add_argument("--schedule-interval", type=float, default=2.0, help="STRONGROOM_SCHEDULE_INTERVAL (s)")
    p.add_argument("--idle-seconds", type=float, default=30.0)
    p.add_argument(
        "--settle-seconds", type=float, default=30.0, help="wait after the last session came up, before the idle phase"
    )
    p.add_argument("--settle-max", type=float, default=300.0, help="longest settle before an idle phase")
    p.add_argument("--enroll-timeout", type=float, default=0.0, help="seconds for every session (0: max(900, N/5))")
    p.add_argument("--window-lead", type=float, default=60.0, help="least seconds from the updates to the window")
    p.add_argument("--progress-seconds", type=float, default=15.0, help="a progress line this often")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds after the window to wait for the jobs")
    p.add_argument("--concurrency", type=int, default=16, help="operator calls in flight")
    p.add_argument("--enroll-concurrency", type=int, default=32, help="enrollments in flight per simulator process")
    p.add_argument("--workers", type=int, default=1, help="simulator processes")
    p.add_argument("--fresh-chunks", type=int, default=3)
    p.add_argument("--common-chunks", type=int, default=5)
    p.add_argument("--chunk-bytes", type=int, default=16384)
    p.add_argument("--kill", action="store_true", help="kill -9 one replica of each service mid-window, restart it")
    p.add_argument("--kill-at", type=float, default=0.3, help="fraction of jobs final when --kill strikes")
    p.add_argument("--kill-replica", type=int, default=2, choices=[1, 2])
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "strongroom-bench")
    p.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = p.parse_args(argv)
    if args.kill and args.replicas < 2:
        p.error("--kill needs --replicas 2")
    return args


def main() -> None:
    args = parse()
    report = asyncio.run(run(args))
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
