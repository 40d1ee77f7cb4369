"""Deploy smoke test: the dev overlay's containers, started from the built images, back up and restore.

The images are built by ``make images``'s code (cached by a hash of the sources and the lock), unpacked
with umoci, and each container of ``deploy/overlays/dev`` is started as the manifest says (see
``pods.py``: command, env from the ConfigMaps and Secrets, user, read-only root, volumes). The
ConfigMaps are the overlay's with the addresses of real Kafka, PostgreSQL and versitygw servers
started here; the Secrets are made here, as an operator would create them (deploy/README.md).

Then: the migration Job runs to completion; every Deployment's startup, readiness and liveness probe
(gRPC health on the plaintext health port) answers SERVING; an agent container (agent image, root with
the capabilities DAC_READ_SEARCH, DAC_OVERRIDE, CHOWN, FOWNER only) enrolls, backs up a directory and
restores it. The Strimzi KafkaTopics are not applied (no Strimzi here): the services create their topics.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from deploy_tools import REPO, load
from grpc_health.v1 import health_pb2, health_pb2_grpc
from image_cache import cached_images
from pods import Pod, launch_argv, manifest_by_name, prepare_mount_points
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.restore.v1 import restore_pb2, restore_pb2_grpc
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from strongroom_cli.stack import ManagedProcess, operator_channel, spawn
from strongroom_platform.admin import create_admin_token
from strongroom_platform.certs import CertificateAuthority, spki_sha256
from strongroom_platform.pg_roles import SERVICE_ROLES
from strongroom_servers.gotools import KUSTOMIZE, ensure_go_binary
from strongroom_servers.images import BuiltImage, unpack_image
from strongroom_servers.kafka import LocalKafka
from strongroom_testing.fixtures import PgLogins, S3Config, start_or_skip
from strongroom_testing.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(1800)]

check = load("check")
SERVICES = ("scheduler", "catalog", "billing", "gateway", "restore")
ADDRESSES = {name: f"127.0.0.{11 + i}" for i, name in enumerate(SERVICES)}
MIGRATE_ADDRESS, AGENT_ADDRESS = "127.0.0.16", "127.0.0.20"
AGENT_CAPABILITIES = ["DAC_READ_SEARCH", "DAC_OVERRIDE", "CHOWN", "FOWNER"]
FINISHED = {common_pb2.JOB_STATUS_COMPLETE, common_pb2.JOB_STATUS_PARTIAL_COMPLETE, common_pb2.JOB_STATUS_FAILED}


@pytest.fixture(scope="module")
def images() -> dict[str, BuiltImage]:
    """The two images, built once per source state (``image_cache``)."""
    return cached_images()


def _unpacked(image: BuiltImage) -> Path:
    """The image's root filesystem, unpacked once next to the built image (mounted read-only by the pods)."""
    bundle = image.layout.parent / f"bundle-{image.name}"
    if not (bundle / ".complete").is_file():
        unpack_image(image, bundle)
        (bundle / ".complete").write_text(image.tag)
    return bundle / "rootfs"


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[str]:
    """A broker for this stack alone (the services' consumer groups start fresh; tests/e2e/conftest.py)."""
    with start_or_skip(LocalKafka(tmp_path / "kafka")) as broker:
        yield broker.bootstrap


@dataclass
class Cluster:
    objects: list[dict[str, Any]]
    work: Path
    hosts: Path
    config_maps: dict[str, dict[str, str]]
    secrets: dict[str, dict[str, str | bytes]]
    services_root: Path
    agent_root: Path
    ca_pem: bytes
    owner_dsn: str
    processes: dict[str, ManagedProcess]

    def pod(self, name: str, address: str, rootfs: Path, **extra: Any) -> Pod:
        return Pod(name, address, rootfs, self.work / name, self.hosts, self.config_maps, self.secrets, **extra)


def _secrets(pg: PgLogins, s3: S3Config, work: Path) -> tuple[dict[str, dict[str, str | bytes]], bytes]:
    """The Secrets an operator creates before the first apply (deploy/README.md), with this test's values."""
    ca = CertificateAuthority.create()
    agent_ca = CertificateAuthority.create("Strongroom agent CA")
    secrets: dict[str, dict[str, str | bytes]] = {
        "strongroom-pg-owner": {"STRONGROOM_PG_MIGRATE_DSN": pg.owner},
        "strongroom-pg-passwords": {role: pg.role_password for role in SERVICE_ROLES.values()},
        "strongroom-s3-gateway": {"STRONGROOM_S3_ACCESS_KEY": s3.access_key, "STRONGROOM_S3_SECRET_KEY": s3.secret_key},
        "strongroom-master-key": {
            "STRONGROOM_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
            "STRONGROOM_MASTER_KEY_ID": "smoke-1",
        },
        "strongroom-agent-ca": {"tls.crt": agent_ca.cert_pem, "tls.key": agent_ca.key_pem},
    }
    for name in SERVICES:
        secrets[f"strongroom-pg-{name}"] = {"STRONGROOM_PG_DSN": pg.service(name)}
        pair = ca.issue_service(name, dns=[f"strongroom-{name}", "localhost"], ips=[ADDRESSES[name]])
        secrets[f"strongroom-tls-{name}"] = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": ca.cert_pem}
    return secrets, ca.cert_pem


@pytest.fixture
async def cluster(
    images: dict[str, BuiltImage], kafka: str, pg_logins: PgLogins, s3_config: S3Config, tmp_path: Path
) -> AsyncIterator[Cluster]:
    objects = check.render(REPO / "deploy" / "overlays" / "dev", ensure_go_binary(KUSTOMIZE))
    config_maps = {o["metadata"]["name"]: dict(o["data"]) for o in objects if o["kind"] == "ConfigMap"}
    # The operator's settings for this environment: where the backends are.
    config_maps["strongroom-common"]["STRONGROOM_KAFKA_BOOTSTRAP"] = kafka
    config_maps["strongroom-s3"].update(
        STRONGROOM_S3_ENDPOINT=s3_config.endpoint,
        STRONGROOM_S3_SECURE="1" if s3_config.secure else "0",
        STRONGROOM_S3_BUCKET=f"smoke-{os.urandom(6).hex()}",
    )
    secrets, ca_pem = _secrets(pg_logins, s3_config, tmp_path)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{ADDRESSES[n]} strongroom-{n}\n" for n in SERVICES))
    started = time.monotonic()
    services_root, agent_root = (_unpacked(images[name]) for name in ("services", "agent"))
    print(f"images unpacked in {time.monotonic() - started:.1f}s", file=sys.stderr)
    containers = [
        c for o in objects if o["kind"] in ("Deployment", "Job") for c in o["spec"]["template"]["spec"]["containers"]
    ]
    prepare_mount_points(services_root, containers, [])
    agent_mounts = ["/tmp", "/var/lib/strongroom-agent", "/run/strongroom/ca", "/host/data", "/host/restore"]
    prepare_mount_points(agent_root, [], agent_mounts)
    cluster = Cluster(
        objects,
        tmp_path / "pods",
        hosts,
        config_maps,
        secrets,
        services_root,
        agent_root,
        ca_pem,
        pg_logins.owner,
        {},
    )
    try:
        yield cluster
    finally:
        for name in reversed(list(cluster.processes)):
            code = await cluster.processes[name].stop()
            print(f"{name}: stopped, exit {code}", file=sys.stderr)
        for log in sorted((tmp_path / "logs").glob("*.log")):
            sys.stderr.write(f"----- {log.name} (tail) -----\n")
            sys.stderr.write("\n".join(log.read_text(errors="replace").splitlines()[-25:]) + "\n")


async def _run_job(cluster: Cluster) -> str:
    job = manifest_by_name(cluster.objects, "Job", "strongroom-migrate")
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    argv = launch_argv(cluster.pod("migrate", MIGRATE_ADDRESS, cluster.services_root), spec, container)
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={"PATH": os.environ["PATH"]}
    )
    output, _ = await asyncio.wait_for(process.communicate(), 180)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    return text


async def _probe(address: str, port: int) -> int:
    async with grpc.aio.insecure_channel(f"{address}:{port}") as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(answer.status)


async def _start_service(cluster: Cluster, name: str) -> list[str]:
    deployment = manifest_by_name(cluster.objects, "Deployment", f"strongroom-{name}")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    argv = launch_argv(cluster.pod(name, ADDRESSES[name], cluster.services_root), spec, container)
    cluster.processes[name] = await spawn(
        name,
        argv,
        {"PATH": os.environ["PATH"]},
        cluster.work.parent / "logs",
        announce=f"{name}-health",
        start_within=180,
    )
    lines = []
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        port = probe["grpc"]["port"]
        deadline = time.monotonic() + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
        while True:
            try:
                status = await _probe(ADDRESSES[name], port)
            except grpc.aio.AioRpcError as exc:
                status = -1
                detail = exc.code().name
            else:
                detail = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        lines.append(f"{name}: {kind} grpc {ADDRESSES[name]}:{port} -> {detail}")
        assert status == health_pb2.HealthCheckResponse.SERVING, lines[-1]
    return lines


def _agent_container(cluster: Cluster, argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The agent's pod spec: the agent image as root with a named capability set, read-only root."""
    spec: dict[str, Any] = {"volumes": [{"name": "tmp", "emptyDir": {}}]}
    container = {
        "name": "agent",
        "command": argv,
        "env": [{"name": "STRONGROOM_LOG_FORMAT", "value": "json"}],
        "workingDir": "/",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {
            "runAsUser": 0,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": AGENT_CAPABILITIES},
        },
    }
    return spec, container


async def test_dev_overlay_runs_from_the_images_and_backs_up_and_restores(cluster: Cluster, tmp_path: Path) -> None:
    report: list[str] = []
    started = time.monotonic()
    migrated = await _run_job(cluster)
    applied = "; ".join(line for line in migrated.splitlines() if "migration(s) applied" in line)
    report.append(f"job strongroom-migrate: exit 0 ({time.monotonic() - started:.1f}s): {applied}")
    for name in SERVICES:
        t0 = time.monotonic()
        report += await _start_service(cluster, name)
        report.append(f"{name}: serving ({time.monotonic() - t0:.1f}s)")

    token = await create_admin_token(cluster.owner_dsn, "acme")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(cluster.ca_pem)
    scheduler_channel = operator_channel(f"{ADDRESSES['scheduler']}:50051", ca_file=ca_file, token=token)
    restore_channel = operator_channel(f"{ADDRESSES['restore']}:50055", ca_file=ca_file, token=token)
    scheduler = scheduler_pb2_grpc.SchedulerServiceStub(scheduler_channel)
    restore = restore_pb2_grpc.RestoreServiceStub(restore_channel)
    source, target, state = tmp_path / "host-data", tmp_path / "host-restore", tmp_path / "agent-state"
    for directory in (source / "etc", target, state):
        directory.mkdir(parents=True)
    (source / "etc" / "app.conf").write_text("listen 8080\n")
    secret = source / "etc" / "secret.key"
    secret.write_bytes(os.urandom(4096))
    secret.chmod(0o600)
    os.chown(secret, 4242, 4242)  # another user's file: read through DAC_READ_SEARCH, restored with CHOWN
    (source / "big.bin").write_bytes(os.urandom(3_000_000))
    try:
        activated = await scheduler.ActivateBackup(
            scheduler_pb2.ActivateBackupRequest(
                account_id="acme",
                name="smoke-1",
                region="local",
                settings=scheduler_pb2.BackupSettings(
                    priority=common_pb2.BACKUP_PRIORITY_HIGH, daily_start_minute=120, roots=["/host/data"]
                ),
                has_settings=True,
            )
        )
        instance_id = activated.instance.instance_id
        ca_pin = spki_sha256(cluster.ca_pem)
        mounts = {
            "/host/data": (source, True),
            "/host/restore": (target, False),
            "/var/lib/strongroom-agent": (state, False),
            "/run/strongroom/ca": (tmp_path, True),
        }
        enroll = [
            "strongroom-agent",
            "enroll",
            "--gateway",
            "strongroom-gateway:50054",
            "--token",
            activated.enrollment_token,
            "--state-dir",
            "/var/lib/strongroom-agent",
            "--ca-file",
            "/run/strongroom/ca/ca.pem",
            "--pin",
            ca_pin,
        ]
        last: list[str] = []

        async def enrolled() -> bool:
            spec, container = _agent_container(cluster, enroll)
            pod = cluster.pod("agent-enroll", AGENT_ADDRESS, cluster.agent_root, extra_mounts=mounts)
            process = await asyncio.create_subprocess_exec(
                *launch_argv(pod, spec, container),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={"PATH": os.environ["PATH"]},
            )
            output, _ = await process.communicate()
            last[:] = [output.decode(errors="replace").strip()]
            return process.returncode == 0

        try:
            await eventually("agent enrollment", enrolled, 120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the agent said: {last}") from None
        report.append(f"agent: enrolled as {instance_id} through strongroom-gateway:50054")
        spec, container = _agent_container(
            cluster, ["strongroom-agent", "run", "--state-dir", "/var/lib/strongroom-agent"]
        )
        pod = cluster.pod("agent", AGENT_ADDRESS, cluster.agent_root, extra_mounts=mounts)
        cluster.processes["agent"] = await spawn(
            "agent", launch_argv(pod, spec, container), {"PATH": os.environ["PATH"]}, tmp_path / "logs"
        )

        async def ready() -> bool:
            instance = await scheduler.GetInstance(scheduler_pb2.GetInstanceRequest(instance_id=instance_id))
            return instance.status == scheduler_pb2.RUNNING_STATUS_READY

        await eventually("instance READY", ready, 120)
        t0 = time.monotonic()
        job = await scheduler.RunBackupNow(scheduler_pb2.RunBackupNowRequest(instance_id=instance_id))

        async def backed_up() -> scheduler_pb2.BackupJob | None:
            current = await scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job.job_id))
            return current if current.status in FINISHED else None

        final = await eventually("backup", backed_up, 300)
        assert final.status == common_pb2.JOB_STATUS_COMPLETE, (final.error, list(final.file_errors))
        report.append(
            f"backup {job.job_id}: COMPLETE, {final.stats.bytes_scanned} bytes scanned, "
            f"{final.stats.bytes_uploaded} uploaded ({time.monotonic() - t0:.1f}s)"
        )
        # The agent called the gateway's mutual-TLS port, by the Service's name (ADR 0028).
        assert "(mTLS strongroom-gateway:50064)" in (tmp_path / "logs" / "agent.log").read_text()
        point_id = await _point_of(cluster, instance_id, token, ca_file)
        t0 = time.monotonic()
        restore_job = await restore.CreateRestoreJob(
            restore_pb2.CreateRestoreJobRequest(
                point_id=point_id,
                include_paths=["etc"],
                target_path="/host/restore",
                conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE,
            )
        )

        async def restored() -> restore_pb2.RestoreJob | None:
            current = await restore.GetRestoreJob(
                restore_pb2.GetRestoreJobRequest(restore_job_id=restore_job.restore_job_id)
            )
            return current if current.status in FINISHED else None

        done = await eventually("restore", restored, 300)
        assert done.status == common_pb2.JOB_STATUS_COMPLETE, (done.error, list(done.failed_files))
        copy = target / "etc" / "secret.key"
        assert copy.read_bytes() == secret.read_bytes()
        assert (copy.stat().st_uid, copy.stat().st_mode & 0o777) == (4242, 0o600)
        assert (target / "etc" / "app.conf").read_text() == "listen 8080\n"
        report.append(
            f"restore {restore_job.restore_job_id}: COMPLETE, etc/ restored to /host/restore, owner and mode kept "
            f"({time.monotonic() - t0:.1f}s)"
        )
    finally:
        await scheduler_channel.close()
        await restore_channel.close()
    report.append(f"total {time.monotonic() - started:.1f}s after the images were ready")
    print("\n".join(["", "deploy smoke test:", *report]), file=sys.stderr)
    # The root was mounted read-only, so the services could write only to their volumes; Faust's data
    # directory is a private temporary one under /tmp, not "<group>-data" in the working directory.
    in_workdir = sorted(p.name for p in (cluster.work / "catalog" / "volumes" / "data").iterdir())
    assert not any(name.endswith("-data") for name in in_workdir), in_workdir


async def _point_of(cluster: Cluster, instance_id: str, token: str, ca_file: Path) -> str:
    from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc

    channel = operator_channel(f"{ADDRESSES['catalog']}:50052", ca_file=ca_file, token=token)
    try:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)

        async def browsable() -> str | None:
            response = await catalog.ListVersions(catalog_pb2.ListVersionsRequest(instance_id=instance_id))
            points = [p for v in response.versions for p in v.points if p.browsable]
            return points[0].point_id if points else None

        point_id: str = await eventually("a browsable point", browsable, 120)
        return point_id
    finally:
        await channel.close()
