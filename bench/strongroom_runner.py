"""Drive Strongroom for the benchmark: real servers, the five services, one enrolled agent per run.

Servers (``strongroom_servers``): PostgreSQL (embedded wheel / Debian binaries), **Apache Kafka**
(KRaft from Maven jars — real Kafka, not Tansu) and versitygw (S3, Object Lock). The services run
as processes through ``strongroom_cli.stack.Stack``, exactly as in ``tests/e2e``.

Every benchmark run activates a new instance under its own account (so it starts with an empty
repository: ``packs/<account>/`` and ``manifests/<account>/`` in the bucket), enrolls a fresh agent
(``python bench/_agent.py`` = ``python -m strongroom_agent`` plus the unthrottle switch below)
with the data set as its backup root, and measures:

* wall time: ``RunBackupNow`` / ``CreateRestoreJob`` → status COMPLETE (polled every 50 ms);
* bytes added to storage: sum of object sizes under the account's prefixes (minio SDK listing)
  after minus before;
* agent peak RSS: ``VmHWM`` of the agent process, reset before each job by writing ``5`` to
  ``/proc/<pid>/clear_refs`` (so it is the peak of that job, not of the process' life);
* CPU time of the agent and of the gateway process (``/proc/<pid>/stat`` utime+stime deltas);
* bytes the agent read (``rchar`` of ``/proc/<pid>/io``), for the throttle runs.

Throttling: the gateway maps priority to ``max_read_bytes_per_second`` (LOW 10 MB/s, HIGH 30 MB/s;
``services/agent-gateway/.../jobs.py`` ``THROTTLE``) and the agent treats 0 as unlimited, but no
setting or API lets an operator ask for 0. For unthrottled runs the benchmark's agent wrapper
(``BENCH_UNTHROTTLED=1``) replaces the agent's ``make_throttle`` with ``Unlimited`` in-process;
the throttle runs use the stock agent behaviour.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import urllib3
from minio import Minio
from strongroom.agent.v1 import gateway_pb2
from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.restore.v1 import restore_pb2, restore_pb2_grpc
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from strongroom_cli.stack import ManagedProcess, Stack, operator_channel, spawn
from strongroom_cli.standalone import provision_database
from strongroom_platform.admin import create_admin_token
from strongroom_platform.certs import CA_CERT_FILE, ensure_local_pki, spki_sha256
from strongroom_servers.kafka import LocalKafka
from strongroom_servers.postgres import LocalPostgres
from strongroom_servers.s3 import LocalVersityGW, S3ServerTls

HERE = Path(__file__).resolve().parent
FINISHED = {
    common_pb2.JOB_STATUS_COMPLETE,
    common_pb2.JOB_STATUS_PARTIAL_COMPLETE,
    common_pb2.JOB_STATUS_FAILED,
    common_pb2.JOB_STATUS_CANCELED,
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass  # not root / old kernel: the peak is then since process start


def read_chars(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


@dataclass
class Result:
    wall: float
    bytes_added: int = 0
    agent_peak_rss: int = 0
    agent_cpu: float = 0.0
    gateway_cpu: float = 0.0
    stats: common_pb2.JobStats | None = None
    point_id: str = ""


@dataclass
class Instance:
    instance_id: str
    account_id: str
    source: Path
    agent: ManagedProcess
    state_dir: Path


@dataclass
class StrongroomBench:
    work: Path
    servers: list[object] = field(default_factory=list)
    stack: Stack | None = None
    env: dict[str, str] = field(default_factory=dict)
    s3: LocalVersityGW | None = None
    # S3 over HTTPS (a certificate from a CA of the bench's own) for the gateway and every peer.
    s3_tls: bool = False
    bucket: str = ""
    ca_file: Path = Path()
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    # Every run backs up into an account of its own (an empty repository); the one admin token
    # holds them all, so they are named up front.
    accounts: list[str] = field(default_factory=lambda: [f"bench-{uuid.uuid4().hex[:10]}" for _ in range(256)])

    # ------------------------------------------------------------ lifecycle

    async def start(self, *, unthrottled_gateway: bool = False) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        pg = LocalPostgres(None, self.work / "postgres" / "data")
        kafka = LocalKafka(self.work / "kafka")
        s3_tls = None
        if self.s3_tls:
            pki = self.work / "s3-pki"
            cert, key = ensure_local_pki(pki, ["s3"])["s3"]
            s3_tls = S3ServerTls(cert, key, pki / CA_CERT_FILE)
        s3 = LocalVersityGW(self.work / "s3", tls=s3_tls)
        loop = asyncio.get_running_loop()
        for server in (pg, kafka, s3):
            await loop.run_in_executor(None, server.start)
            self.servers.append(server)
        self.s3 = s3
        self.bucket = f"strongroom-{uuid.uuid4().hex[:8]}"
        # As in production (ADR 0031): the owner migrates, each service logs in as its own role.
        owner, databases = await provision_database(pg.dsn, clock_offset=dt.timedelta(0))
        env = dict(os.environ)
        env.pop("STRONGROOM_PG_DSN", None)
        env.update(
            STRONGROOM_PG_MIGRATE_DSN=owner,
            STRONGROOM_KAFKA_BOOTSTRAP=kafka.bootstrap,
            STRONGROOM_OBJECT_STORE="s3",
            STRONGROOM_S3_ENDPOINT=s3.endpoint,
            STRONGROOM_S3_ACCESS_KEY=s3.access_key,
            STRONGROOM_S3_SECRET_KEY=s3.secret_key,
            STRONGROOM_S3_SECURE="1" if s3_tls else "0",
            STRONGROOM_S3_BUCKET=self.bucket,
            # Benchmarks only: the gateway setting that lifts the priority's read-rate/core limits
            # (the agent wrapper's BENCH_UNTHROTTLED does the same on the agent side).
            STRONGROOM_GATEWAY_UNTHROTTLED="1" if unthrottled_gateway else "0",
            # Encryption at rest is always on (ADR 0015): the gateway creates its master key here.
            STRONGROOM_MASTER_KEY_FILE=str(self.work / "master.key"),
        )
        if s3_tls is not None:
            env["STRONGROOM_S3_TLS_CA"] = str(s3_tls.ca_file)
        self.env = env
        self.stack = Stack()
        tls_dir = self.work / "tls"
        await self.stack.start(env, self.work / "logs", tls_dir=tls_dir, databases=databases)
        addresses = self.stack.addresses
        token = await create_admin_token(owner, list(self.accounts), name="bench")
        self.ca_file = tls_dir / CA_CERT_FILE
        self.channels = [
            operator_channel(addresses[n], ca_file=self.ca_file, token=token)
            for n in ("scheduler", "catalog", "restore")
        ]
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self.channels[0])
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(self.channels[1])
        self.restore_api = restore_pb2_grpc.RestoreServiceStub(self.channels[2])

    @property
    def s3_ca_file(self) -> Path | None:
        """The CA the S3 server's certificate verifies against, None over plain HTTP."""
        return self.s3.tls.ca_file if self.s3 is not None and self.s3.tls is not None else None

    def minio(self) -> Minio:
        assert self.s3 is not None
        ca = self.s3_ca_file
        http = urllib3.PoolManager(ca_certs=str(ca)) if ca is not None else None
        return Minio(
            self.s3.endpoint,
            access_key=self.s3.access_key,
            secret_key=self.s3.secret_key,
            secure=self.s3.secure,
            http_client=http,
        )

    def server_versions(self) -> dict[str, str]:
        out = {}
        for server in self.servers:
            name = type(server).__name__
            for probe in ("server_version", "server_info", "binary_version"):
                if hasattr(server, probe):
                    try:
                        out[name] = str(getattr(server, probe)()).splitlines()[0][:80]
                    except Exception as exc:  # informational only
                        out[name] = f"? ({exc})"
                    break
        return out

    @property
    def gateway_pid(self) -> int:
        assert self.stack is not None
        return self.stack.processes["gateway"].process.pid

    async def stop(self) -> None:
        for inst in self.instances:
            await inst.agent.stop()
        self.instances.clear()
        for channel in self.channels:
            await channel.close()
        if self.stack is not None:
            await self.stack.stop()
        for server in reversed(self.servers):
            server.stop()  # type: ignore[attr-defined]
        self.servers.clear()

    # ------------------------------------------------------------ instances

    async def _eventually(self, what: str, probe, within: float = 300.0, every: float = 0.05):  # noqa: ANN001, ANN202
        deadline = time.monotonic() + within
        while True:
            result = await probe()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(every)

    async def new_instance(self, source: Path, *, priority: str = "high", unthrottled: bool = True) -> Instance:
        assert self.stack is not None
        account = self.accounts.pop()
        prio = common_pb2.BACKUP_PRIORITY_HIGH if priority == "high" else common_pb2.BACKUP_PRIORITY_LOW
        activated = await self.scheduler.ActivateBackup(
            scheduler_pb2.ActivateBackupRequest(
                account_id=account,
                name=f"bench-{priority}",
                region="local",
                settings=scheduler_pb2.BackupSettings(
                    priority=prio, daily_start_minute=120, keep_latest_version=True, roots=[str(source)]
                ),
                has_settings=True,
            )
        )
        instance_id = activated.instance.instance_id
        state_dir = self.work / "agents" / instance_id
        env = {k: v for k, v in self.env.items() if k != "STRONGROOM_PG_MIGRATE_DSN"}  # agents hold no database access
        env["BENCH_UNTHROTTLED"] = "1" if unthrottled else "0"
        # Experiments: BENCH_AGENT_ENV_<NAME>=<value> sets <NAME> for the agent process only
        # (e.g. BENCH_AGENT_ENV_MALLOC_ARENA_MAX=2).
        for key, value in os.environ.items():
            if key.startswith("BENCH_AGENT_ENV_"):
                env[key.removeprefix("BENCH_AGENT_ENV_")] = value
        gateway = self.stack.addresses["gateway"]
        enroll = [sys.executable, str(HERE / "_agent.py"), "enroll", "--gateway", gateway]
        enroll += ["--token", activated.enrollment_token, "--state-dir", str(state_dir)]
        enroll += ["--ca-file", str(self.ca_file), "--pin", spki_sha256(self.ca_file.read_bytes())]

        async def enrolled() -> bool:
            proc = await asyncio.create_subprocess_exec(
                *enroll, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            return await proc.wait() == 0

        await self._eventually("agent enrollment", enrolled, within=60, every=0.5)
        run = [sys.executable, str(HERE / "_agent.py"), "run", "--state-dir", str(state_dir)]
        agent = await spawn(f"agent-{instance_id[:8]}", run, env, self.work / "logs")

        async def ready() -> bool:
            inst = await self.scheduler.GetInstance(scheduler_pb2.GetInstanceRequest(instance_id=instance_id))
            return inst.status == scheduler_pb2.RUNNING_STATUS_READY

        await self._eventually("instance READY", ready, within=60, every=0.2)
        instance = Instance(instance_id, account, source, agent, state_dir)
        self.instances.append(instance)
        return instance

    async def drop_instance(self, inst: Instance) -> None:
        await inst.agent.stop()
        if inst in self.instances:
            self.instances.remove(inst)

    # ------------------------------------------------------------ storage

    def stored_bytes(self, account: str) -> int:
        client = self.minio()
        total = 0
        for prefix in (f"packs/{account}/", f"manifests/{account}/"):
            for obj in client.list_objects(self.bucket, prefix=prefix, recursive=True):
                total += obj.size or 0
        return total

    # ------------------------------------------------------------ jobs

    async def backup(self, inst: Instance) -> Result:
        pid, gw = inst.agent.process.pid, self.gateway_pid
        loop = asyncio.get_running_loop()
        before = await loop.run_in_executor(None, self.stored_bytes, inst.account_id)
        reset_peak_rss(pid)
        cpu0, gcpu0 = cpu_seconds(pid), cpu_seconds(gw)
        start = time.perf_counter()
        job = await self.scheduler.RunBackupNow(scheduler_pb2.RunBackupNowRequest(instance_id=inst.instance_id))

        async def finished() -> scheduler_pb2.BackupJob | None:
            current = await self.scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job.job_id))
            return current if current.status in FINISHED else None

        final = await self._eventually("backup", finished, within=7200)
        wall = time.perf_counter() - start
        cpu, gcpu, rss = cpu_seconds(pid) - cpu0, cpu_seconds(gw) - gcpu0, peak_rss(pid)
        if final.status != common_pb2.JOB_STATUS_COMPLETE:
            raise RuntimeError(f"backup ended {final.status}: {final.error} {list(final.file_errors)[:5]}")
        after = await loop.run_in_executor(None, self.stored_bytes, inst.account_id)
        return Result(wall, after - before, rss, cpu, gcpu, final.stats)

    async def latest_point(self, inst: Instance, count: int) -> str:
        async def listed() -> str | None:
            response = await self.catalog.ListVersions(catalog_pb2.ListVersionsRequest(instance_id=inst.instance_id))
            versions = list(response.versions)
            if len(versions) >= count and all(p.browsable for v in versions for p in v.points):
                return versions[0].points[0].point_id
            return None

        return await self._eventually(f"{count} browsable versions", listed, within=300, every=0.2)

    async def restore(self, inst: Instance, point_id: str, target: Path, include: list[str] | None = None) -> Result:
        target.mkdir(parents=True, exist_ok=True)
        pid, gw = inst.agent.process.pid, self.gateway_pid
        reset_peak_rss(pid)
        cpu0, gcpu0 = cpu_seconds(pid), cpu_seconds(gw)
        start = time.perf_counter()
        job = await self.restore_api.CreateRestoreJob(
            restore_pb2.CreateRestoreJobRequest(
                point_id=point_id,
                include_paths=include or [],
                target_path=str(target),
                conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE,
            )
        )

        async def finished() -> restore_pb2.RestoreJob | None:
            current = await self.restore_api.GetRestoreJob(
                restore_pb2.GetRestoreJobRequest(restore_job_id=job.restore_job_id)
            )
            return current if current.status in FINISHED else None

        final = await self._eventually("restore", finished, within=7200)
        wall = time.perf_counter() - start
        if final.status != common_pb2.JOB_STATUS_COMPLETE:
            raise RuntimeError(f"restore ended {final.status}: {final.error}")
        return Result(wall, 0, peak_rss(pid), cpu_seconds(pid) - cpu0, cpu_seconds(gw) - gcpu0)

    async def throttled(self, source: Path, priority: str, seconds: float, warmup: float = 5.0) -> dict[str, float]:
        """A stock-throttled backup of ``source`` at ``priority``; measure reads and CPU over ``seconds``."""
        inst = await self.new_instance(source, priority=priority, unthrottled=False)
        pid = inst.agent.process.pid
        try:
            await self.scheduler.RunBackupNow(scheduler_pb2.RunBackupNowRequest(instance_id=inst.instance_id))
            # wait until the agent is reading, then skip the warm-up
            base = read_chars(pid)
            await self._eventually("agent reading", lambda: _async(read_chars(pid) > base + (1 << 20)), 120, 0.1)
            await asyncio.sleep(warmup)
            r0, c0, t0 = read_chars(pid), cpu_seconds(pid), time.perf_counter()
            samples = []
            while time.perf_counter() - t0 < seconds:
                await asyncio.sleep(1.0)
                samples.append((time.perf_counter() - t0, read_chars(pid) - r0))
            r1, c1, t1 = read_chars(pid), cpu_seconds(pid), time.perf_counter()
            wall = t1 - t0
            per_10s = [
                (b1 - b0) / (s1 - s0) / 1e6
                for (s0, b0), (s1, b1) in zip(samples[::10], samples[10::10], strict=False)
                if s1 > s0
            ]
            return {
                "seconds": wall,
                "mb_per_s": (r1 - r0) / wall / 1e6,
                "cores": (c1 - c0) / wall,
                "min_10s_mb_per_s": min(per_10s) if per_10s else 0.0,
                "max_10s_mb_per_s": max(per_10s) if per_10s else 0.0,
            }
        finally:
            await self.scheduler.CancelBackup(scheduler_pb2.InstanceRef(instance_id=inst.instance_id))
            await self.drop_instance(inst)


async def _async(value: bool) -> bool:
    return value
