"""Simulated agents for ``bench/fleet.py``: hundreds to thousands of them in one asyncio process.

Each simulated agent speaks the real protocol with the agent package's own client code: it
enrolls with its activation's one-time token over TLS pinned to the gateway's CA
(``gateway_client.enroll``), gets its client certificate for a fresh key
(``identity.new_key_and_csr``), opens its mTLS channel (``gateway_client.open_channel``) and runs
the agent's ``session.Session`` (hello, reconnect with backoff, JobFinished re-delivery). Only
the backup itself is synthetic (``SimulatedBackup``): instead of scanning a disk it uploads a
small generated delta, ``--fresh`` chunks of new random bytes plus ``--common`` chunks that are the
same for every instance of an account (so all but the first find them already stored), and
commits a point of those files with ``CommitPoint``, chunks keyed and encoded exactly as the
agent does (``chunking.chunk_id`` / ``compress``, ``messages.upload_requests``).

Input: a JSON spec file (``fleet.py`` writes it). Output: one JSON object per line on stdout, for
the driver: ``enrolled``, ``connected`` (each hello: reconnects show up as more than one),
``job`` (a RunBackup reached the session), ``commit``, ``finished``, ``error``; wall-clock times
(``time.time()``), so they compare with the services' ``now()`` on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_agent import __version__
from strongroom_agent.backup.messages import Upload, upload_requests
from strongroom_agent.chunking import ChunkParams, InvalidRepositoryParameters, chunk_id, compress
from strongroom_agent.gateway_client import GatewayError, GrpcGatewayClient, enroll, open_channel
from strongroom_agent.identity import new_key_and_csr
from strongroom_agent.jobs import ProgressCallback, RetryPolicy, job_finished
from strongroom_agent.session import Session
from strongroom_agent.transport import GatewayTrust, mtls_target

FILESYSTEM = common_pb2.Filesystem(mount_point="/", device="/dev/vda1", fs_type="ext4", capacity_bytes=40 << 30)
UPLOAD_MESSAGE_BYTES = 1 << 20
# The gateway learns an activation's token from the instance-activated event: until then it
# answers UNAUTHENTICATED, so enrollment is retried for a while (as bench/strongroom_runner.py does).
ENROLL_RETRY_SECONDS = 300.0


def emit(kind: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"e": kind, "t": time.time(), **fields}) + "\n")


@dataclass(frozen=True)
class Spec:
    ca_pem: bytes
    pins: tuple[str, ...]
    fresh: int
    common: int
    chunk_bytes: int
    enroll_concurrency: int
    agents: list[dict[str, str]]  # token, gateway, account, name

    @classmethod
    def load(cls, path: Path) -> Spec:
        raw = json.loads(path.read_text())
        return cls(
            ca_pem=raw["ca_pem"].encode(),
            pins=tuple(raw["pins"]),
            fresh=int(raw["fresh"]),
            common=int(raw["common"]),
            chunk_bytes=int(raw["chunk_bytes"]),
            enroll_concurrency=int(raw["enroll_concurrency"]),
            agents=list(raw["agents"]),
        )


class SimulatedBackup:
    """The backup of one simulated agent: a small generated delta, uploaded and committed for real."""

    def __init__(self, client: GrpcGatewayClient, spec: Spec, account: str, instance_id: str) -> None:
        self._client = client
        self._spec = spec
        self._account = account
        self._instance_id = instance_id
        self._retry = RetryPolicy(initial=0.5, maximum=5.0, attempts=60)

    def _files(self) -> list[tuple[str, bytes]]:
        spec = self._spec
        shared = random.Random(f"common-{self._account}")  # the same "OS files" on every instance of an account
        files = [(f"usr/lib/common-{k:03d}.so", shared.randbytes(spec.chunk_bytes)) for k in range(spec.common)]
        files += [(f"var/data/new-{k:03d}.bin", random.randbytes(spec.chunk_bytes)) for k in range(spec.fresh)]
        return files

    async def __call__(
        self, command: gateway_pb2.RunBackup, cancel: asyncio.Event, on_progress: ProgressCallback
    ) -> gateway_pb2.JobFinished:
        job_id = command.job_id
        emit("job", instance=self._instance_id, job=job_id)
        stats = common_pb2.JobStats()
        try:
            params = ChunkParams.from_proto(command.repository)
        except InvalidRepositoryParameters as exc:
            return job_finished(job_id, common_pb2.JOB_STATUS_FAILED, stats, [], f"bad repository parameters: {exc}")
        files = self._files()
        ids = [chunk_id(params.key, content) for _, content in files]
        missing = set(
            await self._retry.call("FindMissingChunks", lambda: self._client.find_missing_chunks(job_id, ids))
        )
        uploads = []
        for cid, (_, content) in zip(ids, files, strict=True):
            if cid in missing:
                compression, payload = compress(content)
                uploads.append(Upload(cid, len(content), compression, payload, 0))
        if uploads:
            requests = upload_requests(job_id, uploads, UPLOAD_MESSAGE_BYTES)
            await self._retry.call("UploadChunks", lambda: self._client.upload_chunks(requests))
        if cancel.is_set():
            return job_finished(job_id, common_pb2.JOB_STATUS_CANCELED, stats, [])
        now_ns = time.time_ns()
        entries = [
            common_pb2.FileEntry(path=d, type=common_pb2.ENTRY_TYPE_DIRECTORY, mode=0o755, mtime_ns=now_ns)
            for d in ("usr", "usr/lib", "var", "var/data")
        ]
        for cid, (path, content) in zip(ids, files, strict=True):
            entries.append(
                common_pb2.FileEntry(
                    path=path,
                    type=common_pb2.ENTRY_TYPE_FILE,
                    mode=0o644,
                    size=len(content),
                    mtime_ns=now_ns,
                    chunk_ids=[cid],
                )
            )
        header = gateway_pb2.PointHeader(job_id=job_id, filesystem=FILESYSTEM)

        async def commit() -> gateway_pb2.CommitPointResponse:
            async def requests() -> object:
                yield gateway_pb2.CommitPointRequest(header=header)
                yield gateway_pb2.CommitPointRequest(entries=gateway_pb2.EntryBatch(entries=entries))

            return await self._client.commit_point(requests())  # type: ignore[arg-type]

        response = await self._retry.call("CommitPoint", commit)
        emit("commit", instance=self._instance_id, job=job_id, point=response.point_id)
        stats.files_scanned = stats.files_read = len(files)
        stats.bytes_scanned = stats.bytes_read = sum(len(c) for _, c in files)
        stats.chunks_new = len(uploads)
        stats.bytes_uploaded = sum(len(u.payload) for u in uploads)
        return job_finished(job_id, common_pb2.JOB_STATUS_COMPLETE, stats, [])


async def _refuse_restore(
    command: gateway_pb2.RunRestore, cancel: asyncio.Event, on_progress: ProgressCallback
) -> gateway_pb2.JobFinished:
    return job_finished(command.restore_job_id, common_pb2.JOB_STATUS_FAILED, common_pb2.JobStats(), [], "simulated")


async def _enroll(spec: Spec, trust: GatewayTrust, agent: dict[str, str]) -> tuple[str, GrpcGatewayClient, str]:
    key_pem, csr_pem = new_key_and_csr()
    request = gateway_pb2.EnrollRequest(
        enrollment_token=agent["token"],
        hostname=agent["name"],
        os="linux",
        arch="x86_64",
        agent_version=__version__,
        filesystems=[FILESYSTEM],
        csr_pem=csr_pem,
        host_id=agent["name"],
    )
    deadline = time.monotonic() + ENROLL_RETRY_SECONDS
    delay = 0.2
    while True:
        try:
            response = await enroll(agent["gateway"], request, trust)
            break
        except GatewayError as exc:
            if exc.code not in ("UNAUTHENTICATED", "UNAVAILABLE", "DEADLINE_EXCEEDED") or time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    certificate = response.certificate
    target = mtls_target(agent["gateway"], certificate.mtls_address)
    channel = open_channel(target, trust, (bytes(certificate.certificate_pem), key_pem))
    return response.instance_id, GrpcGatewayClient(channel, response.instance_id, None), target


def _hello(instance_id: str, name: str) -> Callable[[], Awaitable[gateway_pb2.AgentHello]]:
    async def hello() -> gateway_pb2.AgentHello:
        emit("connected", instance=instance_id)
        return gateway_pb2.AgentHello(agent_version=__version__, hostname=name, filesystems=[FILESYSTEM])

    return hello


async def _agent(
    spec: Spec, trust: GatewayTrust, agent: dict[str, str], gate: asyncio.Semaphore, stop: asyncio.Event
) -> None:
    try:
        async with gate:
            instance_id, client, target = await _enroll(spec, trust, agent)
        emit("enrolled", instance=instance_id, name=agent["name"], gateway=target)
        backup = SimulatedBackup(client, spec, agent["account"], instance_id)

        async def run_backup(
            command: gateway_pb2.RunBackup, cancel: asyncio.Event, on_progress: ProgressCallback
        ) -> gateway_pb2.JobFinished:
            finished = await backup(command, cancel, on_progress)
            emit("finished", instance=instance_id, job=command.job_id, status=finished.status, error=finished.error)
            return finished

        session = Session(
            client, hello=_hello(instance_id, agent["name"]), run_backup=run_backup, run_restore=_refuse_restore
        )
        await session.run(stop)
    except Exception as exc:  # reported to the driver, which counts it
        emit("error", name=agent["name"], error=f"{type(exc).__name__}: {exc}")


async def main_async(spec: Spec) -> None:
    trust = GatewayTrust(ca_pem=spec.ca_pem, pins=spec.pins)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    gate = asyncio.Semaphore(spec.enroll_concurrency)
    await asyncio.gather(*(_agent(spec, trust, agent, gate, stop) for agent in spec.agents))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    args = parser.parse_args()
    asyncio.run(main_async(Spec.load(args.spec)))


if __name__ == "__main__":
    main()
