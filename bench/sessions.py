"""Agent sessions over two gateway processes (ADR 0050): idle cost and job delivery latency.

    uv run python bench/sessions.py [--sessions 1000] [--idle-seconds 60] [--no-durable] [--out FILE.md]

Real PostgreSQL (durable; ``--no-durable``: without fsync) and Apache Kafka (topics of the
registry's 12 partitions), two ``strongroom-gateway`` processes (the production entry point, one
consumer group). The bench process plays the rest of the platform and the agents:

1. publishes ``instance-activated`` for ``--sessions`` instances (as the scheduler's relay does)
   and enrolls each through ``Enroll`` (the real gRPC protocol, bearer credentials);
2. opens one ``Connect`` stream per instance, alternately on gateway A and B: many lightweight
   agents in one process, each a stream that only waits for commands;
3. **idle**: CPU seconds of each gateway process and PostgreSQL commits (``pg_stat_database``)
   over ``--idle-seconds``, first with no session open (the baseline), then with all of them open;
4. **delivery**: publishes one ``job-requested`` per instance in one batch (1,000 jobs issued at
   once), then times when each session receives its ``RunBackup`` — from the publish (Kafka,
   either gateway's consumer, the database, the notification to the session's gateway) and from
   the job's row (``jobs.created_at``, written by the consuming gateway) to the session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
from _delivery_probe import Probe, probe_table
from _latency import percentile
from strongroom.agent.v1 import gateway_pb2, gateway_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_agent import __version__ as AGENT_VERSION
from strongroom_agent.gateway_client import CHANNEL_OPTIONS
from strongroom_cli.stack import ManagedProcess, spawn
from strongroom_cli.standalone import provision_database
from strongroom_platform.clock import SystemClock
from strongroom_platform.eventbus import OutgoingRecord
from strongroom_platform.eventbus_kafka import KafkaPublisher
from strongroom_platform.events import INSTANCE_ACTIVATED, JOB_REQUESTED, new_meta, to_timestamp
from strongroom_servers.kafka import LocalKafka
from strongroom_servers.postgres import LocalPostgres

ACCOUNT = "bench-account"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def commits(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))


async def start_gateways(work: Path, dsn: str, bootstrap: str) -> list[ManagedProcess]:
    env = dict(
        os.environ,
        STRONGROOM_PG_DSN=dsn,
        STRONGROOM_KAFKA_BOOTSTRAP=bootstrap,
        STRONGROOM_OBJECT_STORE=f"file:{work / 'objects'}",
        STRONGROOM_MASTER_KEY_FILE=str(work / "master.key"),
        STRONGROOM_GRPC_LISTEN="127.0.0.1:0",
        STRONGROOM_INSECURE_PLAINTEXT="1",
        STRONGROOM_GATEWAY_GC_INTERVAL_SECONDS="0",
        STRONGROOM_GATEWAY_VERIFY_DAILY="0",
    )
    gateways = []
    for name in ("gateway-a", "gateway-b"):  # one after the other: the first creates the master key
        gateways.append(
            await spawn(name, [sys.executable, "-m", "strongroom_gateway"], env, work / "logs", announce="gateway")
        )
    return gateways


async def activate_and_enroll(
    publisher: KafkaPublisher, stubs: list[gateway_pb2_grpc.AgentGatewayServiceStub], count: int
) -> list[tuple[str, str]]:
    """(instance id, bearer) of ``count`` enrolled instances."""
    now = SystemClock().now()
    tokens = {f"bench-{i:06d}": secrets.token_urlsafe(24) for i in range(count)}
    records = []
    for instance_id, token in tokens.items():
        event = events_pb2.InstanceActivated(
            meta=new_meta("scheduler", now),
            account_id=ACCOUNT,
            instance_id=instance_id,
            region="r1",
            enrollment_token_sha256=hashlib.sha256(token.encode()).hexdigest(),
            token_expires_at=to_timestamp(now + dt.timedelta(hours=1)),
        )
        records.append(OutgoingRecord(INSTANCE_ACTIVATED, instance_id.encode(), event.SerializeToString()))
    outcomes = await publisher.publish_batch(records)
    assert not any(outcomes), outcomes
    enrolled: list[tuple[str, str]] = []
    slots = asyncio.Semaphore(16)

    async def enroll(index: int, token: str) -> None:
        async with slots:
            for _ in range(600):  # until the gateway consumed the activation
                try:
                    response = await stubs[index % 2].Enroll(
                        gateway_pb2.EnrollRequest(
                            enrollment_token=token,
                            hostname=f"host-{index}",
                            agent_version=AGENT_VERSION,  # the gateway refuses agents outside N-1..N (ADR 0045)
                            filesystems=[common_pb2.Filesystem(mount_point="/", device="/dev/vda1", fs_type="ext4")],
                        ),
                        timeout=30,
                    )
                    enrolled.append((response.instance_id, f"Bearer {response.instance_id}.{response.credential}"))
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                        raise
                    await asyncio.sleep(0.1)
            raise RuntimeError("an activation never reached the gateways")

    await asyncio.gather(*(enroll(i, token) for i, token in enumerate(tokens.values())))
    return enrolled


class Sessions:
    """One ``Connect`` stream per agent; the receive time of every ``RunBackup``, by job id."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.expected = 0
        self.all_received = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def connect(self, stub: gateway_pb2_grpc.AgentGatewayServiceStub, bearer: str) -> None:
        self._tasks.append(asyncio.create_task(self._session(stub, bearer)))

    async def _reports(self) -> AsyncIterator[gateway_pb2.AgentReport]:
        await self._stop.wait()
        if False:  # an agent that reports nothing: an async generator that only waits
            yield gateway_pb2.AgentReport()

    async def _session(self, stub: gateway_pb2_grpc.AgentGatewayServiceStub, bearer: str) -> None:
        call = stub.Connect(self._reports(), metadata=(("authorization", bearer),))
        try:
            async for command in call:
                if command.HasField("run_backup"):
                    self.received[command.run_backup.job_id] = time.time()
                    if self.expected and len(self.received) >= self.expected:
                        self.all_received.set()
        except grpc.aio.AioRpcError as exc:
            if not self._stop.is_set():
                print(f"session ended: {exc.code()} {exc.details()}", flush=True)

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class WorkerSessions:
    """The agents' streams in ``processes`` child processes (this script with ``--agent-worker``),
    each agent on its own connection with the agent's channel options: 10,000 agents are more
    than one bench process can drive while it also measures. Same interface as :class:`Sessions`."""

    def __init__(self, processes: int, options: list[tuple[str, int]]) -> None:
        self.received: dict[str, float] = {}
        self.expected = 0
        self.all_received = asyncio.Event()
        self._count = processes
        self._options = options
        self._agents: list[list[tuple[str, str]]] = [[] for _ in range(processes)]
        self._workers: list[asyncio.subprocess.Process] = []
        self._readers: list[asyncio.Task[None]] = []
        self._connected = 0

    def connect(self, address: str, bearer: str) -> None:
        self._agents[sum(len(a) for a in self._agents) % self._count].append((address, bearer))

    async def start(self) -> None:
        """Start the workers with their agents; returns once every stream is open."""
        opened = asyncio.Event()
        total = sum(len(a) for a in self._agents)
        for agents in self._agents:
            worker = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--agent-worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.write(json.dumps({"options": self._options, "agents": agents}).encode() + b"\n")
            await worker.stdin.drain()
            self._workers.append(worker)
            self._readers.append(asyncio.create_task(self._read(worker.stdout, total, opened)))
        waiting = asyncio.ensure_future(opened.wait())
        await asyncio.wait([waiting, *self._readers], timeout=600, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if not opened.is_set():
            raise RuntimeError("an agent worker ended (or took 10 minutes) before its streams were open")

    async def _read(self, out: asyncio.StreamReader, total: int, opened: asyncio.Event) -> None:
        async for line in out:
            kind, _, rest = line.decode().strip().partition(" ")
            if kind == "opened":
                self._connected += int(rest)
                if self._connected >= total:
                    opened.set()
            elif kind == "job":
                job_id, _, at = rest.partition(" ")
                self.received[job_id] = float(at)
                if self.expected and len(self.received) >= self.expected:
                    self.all_received.set()
            elif kind == "ended":
                print(f"session ended: {rest}", flush=True)

    async def close(self) -> None:
        for worker in self._workers:
            if worker.stdin is not None:
                worker.stdin.close()
        for worker in self._workers:
            try:
                await asyncio.wait_for(worker.wait(), timeout=30)
            except TimeoutError:
                worker.kill()
                await worker.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]


async def agent_worker() -> None:
    """``--agent-worker``: the agents given on stdin (one JSON line), each on its own channel; prints
    ``opened N``, then ``job <job id> <time>`` per RunBackup received; ends when stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)  # one line holds every agent of this worker
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    spec = json.loads(await reader.readline())
    stop = asyncio.Event()
    options = [tuple(o) for o in spec["options"]]

    async def reports() -> AsyncIterator[gateway_pb2.AgentReport]:
        await stop.wait()
        if False:  # an agent that reports nothing
            yield gateway_pb2.AgentReport()

    async def session(channel: grpc.aio.Channel, bearer: str) -> None:
        call = gateway_pb2_grpc.AgentGatewayServiceStub(channel).Connect(
            reports(), metadata=(("authorization", bearer),)
        )
        try:
            async for command in call:
                if command.HasField("run_backup"):
                    print(f"job {command.run_backup.job_id} {time.time()}", flush=True)
        except grpc.aio.AioRpcError as exc:
            if not stop.is_set():
                print(f"ended {exc.code()} {exc.details()}", flush=True)

    channels = []
    tasks = []
    for address, bearer in spec["agents"]:
        channel = grpc.aio.insecure_channel(address, options=options)
        channels.append(channel)
        tasks.append(asyncio.create_task(session(channel, bearer)))
        if len(tasks) % 100 == 0:
            await asyncio.sleep(0.05)  # do not open thousands of connections in one loop turn
    await asyncio.sleep(2)
    print(f"opened {len(tasks)}", flush=True)
    while await reader.readline():
        pass
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close(grace=None)


async def idle_cost(gateways: list[ManagedProcess], pool: asyncpg.Pool, seconds: float) -> dict[str, float]:
    pids = [g.process.pid for g in gateways]
    cpu0 = [cpu_seconds(pid) for pid in pids]
    commits0 = await commits(pool)
    await asyncio.sleep(seconds)
    commits1 = await commits(pool)
    cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu0, strict=True)]
    return {
        "cpu_a": cpu[0] / seconds,
        "cpu_b": cpu[1] / seconds,
        # Our own two pg_stat_database reads are 2 of these commits.
        "commits_per_s": (commits1 - commits0 - 1) / seconds,
    }


def agent_options(args: argparse.Namespace) -> list[tuple[str, int]]:
    """The agent's channel options (``strongroom_agent.gateway_client``), its keepalive interval
    replaced by ``--keepalive-seconds`` when given."""
    options = [(key, value) for key, value in CHANNEL_OPTIONS if isinstance(value, int)]
    if args.keepalive_seconds:
        options = [(k, v) for k, v in options if k != "grpc.keepalive_time_ms"]
        options.append(("grpc.keepalive_time_ms", int(args.keepalive_seconds * 1000)))
    return options


async def main(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="strongroom-bench-sessions-"))
    pg = LocalPostgres(None, work / "pg", durable=args.durable)
    kafka = LocalKafka(work / "kafka")
    gateways: list[ManagedProcess] = []
    sessions: Sessions | WorkerSessions = (
        WorkerSessions(args.agent_processes, agent_options(args)) if args.agent_processes else Sessions()
    )
    finished = False
    try:
        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(kafka.start)
        owner, databases = await provision_database(pg.dsn, clock_offset=dt.timedelta(0))
        gateways = await start_gateways(work, databases["gateway"], kafka.bootstrap)
        pool = await asyncpg.create_pool(owner, min_size=1, max_size=2)
        channels = [grpc.aio.insecure_channel(g.address) for g in gateways]
        stubs = [gateway_pb2_grpc.AgentGatewayServiceStub(c) for c in channels]
        async with KafkaPublisher(kafka.bootstrap, idempotent=True) as publisher:
            started = time.perf_counter()
            enrolled = await activate_and_enroll(publisher, stubs, args.sessions)
            print(f"{len(enrolled)} instances activated and enrolled in {time.perf_counter() - started:.1f} s")
            await asyncio.sleep(5)  # let the enrollments' own work settle
            load_baseline = os.getloadavg()
            baseline = await idle_cost(gateways, pool, args.idle_seconds)
            print(f"idle, no sessions: {baseline}", flush=True)
            for index, (_, bearer) in enumerate(enrolled):
                if isinstance(sessions, WorkerSessions):
                    sessions.connect(gateways[index % 2].address, bearer)
                    continue
                stub = stubs[index % 2]
                if args.agent_channels:  # each agent on its own connection, with the agent's keepalive
                    channel = grpc.aio.insecure_channel(gateways[index % 2].address, options=agent_options(args))
                    channels.append(channel)
                    stub = gateway_pb2_grpc.AgentGatewayServiceStub(channel)
                sessions.connect(stub, bearer)
            if isinstance(sessions, WorkerSessions):
                await sessions.start()
            await asyncio.sleep(10)  # every stream reached the gateway and waits there
            load_idle = os.getloadavg()
            idle = await idle_cost(gateways, pool, args.idle_seconds)
            print(f"idle, {len(enrolled)} sessions: {idle}", flush=True)
            rss = [rss_mb(g.process.pid) for g in gateways]

            now = SystemClock().now()
            jobs = {}
            records = []
            for instance_id, _ in enrolled:
                job_id = f"job-{instance_id}"
                jobs[job_id] = instance_id
                event = events_pb2.JobRequested(
                    meta=new_meta("scheduler", now), account_id=ACCOUNT, instance_id=instance_id, job_id=job_id
                )
                records.append(OutgoingRecord(JOB_REQUESTED, instance_id.encode(), event.SerializeToString()))
            sessions.expected = len(jobs)
            probe = Probe() if args.probe else None
            if probe is not None:
                await probe.start(owner)
                await asyncio.sleep(0.5)
            cpu0 = [cpu_seconds(g.process.pid) for g in gateways]
            issued = time.time()
            print(f"publishing the jobs at {dt.datetime.fromtimestamp(issued, dt.UTC).isoformat()}", flush=True)
            outcomes = await publisher.publish_batch(records)
            published = time.time()
            assert not any(outcomes), outcomes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sessions.all_received.wait(), timeout=120)
            cpu_delivery = [cpu_seconds(g.process.pid) - c for g, c in zip(gateways, cpu0, strict=True)]
            await asyncio.sleep(0.5)  # the last notifications
            stamps = await probe.stamps() if probe is not None else {}
            notified = dict(probe.notified) if probe is not None else {}
            if probe is not None:
                await probe.close()
        if not sessions.received:
            raise SystemExit(f"none of the {len(jobs)} jobs reached its session")
        # A session the bench could not open (printed above) cannot receive its job: the latencies
        # are of the jobs received, and the report says how many those are.
        received = [j for j in jobs if j in sessions.received]
        rows = await pool.fetch("SELECT job_id, created_at, state FROM gateway.jobs")
        stored = {r["job_id"]: r["created_at"].timestamp() for r in rows}
        from_issue = [(sessions.received[j] - issued) * 1000 for j in received]
        from_store = [(sessions.received[j] - stored[j]) * 1000 for j in received]
        rows_after = [(stored[j] - issued) * 1000 for j in jobs]  # when the consumers wrote the rows
        delivered_states = sum(1 for r in rows if r["state"] == "delivered")
        await pool.close()
        for channel in channels:
            await channel.close()
        finished = True
    finally:
        await sessions.close()
        for gateway in gateways:
            await gateway.stop()
        kafka.stop()
        pg.stop()
        if finished and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif finished:
            print(f"the servers' and gateways' files are kept in {work}", file=sys.stderr)
        else:
            print(f"failed; the servers' and gateways' files are kept in {work}", file=sys.stderr)

    n = len(enrolled)
    per_1000 = lambda value: value * 1000 / n  # noqa: E731
    where = f"{args.agent_processes} worker processes" if args.agent_processes else "the bench process"
    extra_cpu = (idle["cpu_a"] + idle["cpu_b"]) - (baseline["cpu_a"] + baseline["cpu_b"])
    lines = [
        f"# Agent sessions over two gateway processes, {dt.date.today().isoformat()}",
        "",
        f"`uv run python bench/sessions.py {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {platform.machine()}, CPython {platform.python_version()}, {os.cpu_count()} CPUs (shared"
        f" with other work; load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())} at the end)."
        f" PostgreSQL {'durable' if args.durable else 'without fsync'}, Apache Kafka 1 broker, topics of 12"
        " partitions, two"
        f" `strongroom-gateway` processes in one consumer group; {n} agents (gRPC `Connect` streams, bearer"
        f" credentials) in {where}, alternately on gateway A and B.",
        "",
        "## Idle",
        "",
        "| | gateway A CPU | gateway B CPU | PostgreSQL commits/s |",
        "|---|---:|---:|---:|",
        f"| no sessions | {baseline['cpu_a']:.2%} | {baseline['cpu_b']:.2%} | {baseline['commits_per_s']:.2f} |",
        f"| {n} sessions | {idle['cpu_a']:.2%} | {idle['cpu_b']:.2%} | {idle['commits_per_s']:.2f} |",
        "",
        f"Cost of the sessions: {extra_cpu:.3%} of a core in total = {per_1000(extra_cpu):.3%} per 1,000 idle"
        f" sessions (target ≤ 0.1%); {idle['commits_per_s'] - baseline['commits_per_s']:+.2f} commits/s."
        f" Gateway RSS with the sessions: {rss[0]:.0f} MB and {rss[1]:.0f} MB. Measured over"
        f" {args.idle_seconds:.0f} s each; 1-minute load average {load_baseline[0]:.1f} (no sessions) and"
        f" {load_idle[0]:.1f} (sessions) as each phase began."
        + (
            f" The agents: {args.agent_processes} worker processes, each agent on its own connection with"
            " the agent's channel options."
            if args.agent_processes
            else ""
        ),
        "",
        f"## Delivery: {n} jobs issued at once",
        "",
        "| from | p50 ms | p95 ms | max ms |",
        "|---|---:|---:|---:|",
        f"| publish of the job-requested batch | {statistics.median(from_issue):.0f} |"
        f" {percentile(from_issue, 0.95):.0f} | {max(from_issue):.0f} |",
        f"| the job's row in the gateway (consumed) | {statistics.median(from_store):.0f} |"
        f" {percentile(from_store, 0.95):.0f} | {max(from_store):.0f} |",
        "",
        f"Publishing the batch took {(published - issued) * 1000:.0f} ms. The consumers wrote the job rows"
        f" {min(rows_after):.0f} ms (first), {statistics.median(rows_after):.0f} ms (median),"
        f" {percentile(rows_after, 0.95):.0f} ms (p95) and {max(rows_after):.0f} ms (last) after the publish began."
        f" Jobs received by their session: {len(received)} of {n}. Jobs marked delivered:"
        f" {delivered_states} of {n}. Gateway CPU during delivery: A {cpu_delivery[0]:.2f} s, B"
        f" {cpu_delivery[1]:.2f} s.",
    ]
    if args.probe:
        lines += ["", *probe_table(jobs, issued, stamps, notified, sessions.received, stored)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument(
        "--no-durable",
        dest="durable",
        action="store_false",
        help="PostgreSQL without fsync (tells commit latency apart from CPU on a busy disk)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--agent-channels",
        action="store_true",
        help="each agent's stream on its own connection with the agent's channel options (keepalive pings)",
    )
    parser.add_argument("--keepalive-seconds", type=float, help="with --agent-channels: the agents' keepalive interval")
    parser.add_argument("--keep", action="store_true", help="keep the servers' and gateways' files (logs)")
    parser.add_argument(
        "--agent-processes",
        type=int,
        default=0,
        help="the agents in this many worker processes, each agent on its own connection (10,000 sessions)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="time each step of the delivery (row, NOTIFY, mark, agent): a trigger and a listener of the bench",
    )
    parser.add_argument("--agent-worker", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.agent_worker:
        asyncio.run(agent_worker())
        raise SystemExit(0)
    report = asyncio.run(main(arguments))
    print(report)
    if arguments.out:
        arguments.out.write_text(report)
