"""The gRPC client and the CLI against an in-process gRPC server backed by the in-memory gateway."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_fakes import FakeGateway, run_backup_command, write_file
from strongroom.agent.v1 import gateway_pb2, gateway_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom_agent import gateway_client
from strongroom_agent.__main__ import EXIT_REJECTED, EXIT_UNREACHABLE, EXIT_USAGE, _enroll, run_cli
from strongroom_agent.backup import run_backup
from strongroom_agent.chunking import decode_chunk
from strongroom_agent.config import load_state
from strongroom_agent.exclusions import LinuxExclusions
from strongroom_agent.gateway_client import GatewayError, GrpcGatewayClient, open_channel
from strongroom_agent.restore import run_restore
from strongroom_agent.transport import GatewayTrust

TOKEN, INSTANCE, SECRET = "enroll-me", "inst-1", "s3cret"

PLAINTEXT = GatewayTrust(plaintext=True)  # these tests talk to an in-process fake gateway


class Servicer(gateway_pb2_grpc.AgentGatewayServiceServicer):
    def __init__(self) -> None:
        self.fake = FakeGateway()
        self.accept_compressed: list[bool] = []
        self.max_message_bytes: list[int] = []
        self.read_chunk_messages = 0
        self.legacy_read_chunks = False  # answer ReadChunks as a gateway that predates max_message_bytes
        self.enrollments: list[gateway_pb2.EnrollRequest] = []
        self.commands: asyncio.Queue[gateway_pb2.AgentCommand | None] = asyncio.Queue()
        self.reports: asyncio.Queue[gateway_pb2.AgentReport] = asyncio.Queue()

    async def _auth(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Bearer {INSTANCE}.{SECRET}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad credential")

    async def Enroll(self, request: Any, context: Any) -> gateway_pb2.EnrollResponse:
        if request.enrollment_token != TOKEN:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or used enrollment token")
        self.enrollments.append(request)
        return gateway_pb2.EnrollResponse(instance_id=INSTANCE, credential=SECRET)

    async def FindMissingChunks(self, request: Any, context: Any) -> gateway_pb2.FindMissingChunksResponse:
        await self._auth(context)
        missing = await self.fake.find_missing_chunks(request.job_id, list(request.chunk_ids))
        return gateway_pb2.FindMissingChunksResponse(missing_chunk_ids=missing)

    async def UploadChunks(self, request_iterator: Any, context: Any) -> gateway_pb2.UploadChunksResponse:
        await self._auth(context)
        return await self.fake.upload_chunks([r async for r in request_iterator])

    async def CommitPoint(self, request_iterator: Any, context: Any) -> gateway_pb2.CommitPointResponse:
        await self._auth(context)
        return await self.fake.commit_point(request_iterator.__aiter__())

    async def ReadManifest(self, request: Any, context: Any) -> AsyncIterator[gateway_pb2.ReadManifestResponse]:
        await self._auth(context)
        async for entries in self.fake.read_manifest(request):
            yield gateway_pb2.ReadManifestResponse(entries=entries)

    async def ReadChunks(self, request: Any, context: Any) -> AsyncIterator[gateway_pb2.ReadChunksResponse]:
        await self._auth(context)
        self.accept_compressed.append(request.accept_compressed)
        self.max_message_bytes.append(request.max_message_bytes)
        async for response in self.fake.read_chunks_responses(request, legacy=self.legacy_read_chunks):
            self.read_chunk_messages += 1
            yield response

    async def Connect(self, request_iterator: Any, context: Any) -> AsyncIterator[gateway_pb2.AgentCommand]:
        await self._auth(context)

        async def pump() -> None:
            async for report in request_iterator:
                await self.reports.put(report)

        reader = asyncio.create_task(pump())
        try:
            while (command := await self.commands.get()) is not None:
                yield command
        finally:
            reader.cancel()


@pytest.fixture
async def server() -> Any:
    servicer = Servicer()
    srv = grpc.aio.server()
    gateway_pb2_grpc.add_AgentGatewayServiceServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    yield servicer, f"127.0.0.1:{port}"
    await srv.stop(None)


async def test_enroll_stores_the_credential_privately(server: Any, tmp_path: Path) -> None:
    servicer, address = server
    state_dir = tmp_path / "state"
    message = await _enroll(address, TOKEN, str(state_dir), PLAINTEXT, None)
    assert "inst-1" in message
    state = load_state(str(state_dir))
    assert (state.gateway, state.instance_id, state.credential) == (address, INSTANCE, SECRET)
    assert stat.S_IMODE(os.stat(state_dir / "agent.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert json.loads((state_dir / "agent.json").read_text())["instance_id"] == INSTANCE
    request = servicer.enrollments[0]
    assert request.hostname and request.os == "linux" and request.agent_version


async def test_cli_enroll_rejected_token_and_unreachable_gateway(
    server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _servicer, address = server
    state_dir = str(tmp_path / "state")
    code = await asyncio.to_thread(
        run_cli, ["enroll", "--gateway", address, "--token", "wrong", "--state-dir", state_dir, "--insecure-plaintext"]
    )
    assert code == EXIT_REJECTED
    err = capsys.readouterr().err
    assert "rejected the enrollment token: unknown or used enrollment token" in err and "Traceback" not in err
    assert not os.path.exists(state_dir)

    code = await asyncio.to_thread(
        run_cli,
        ["enroll", "--gateway", "127.0.0.1:9", "--token", TOKEN, "--state-dir", state_dir, "--insecure-plaintext"],
    )
    assert code == EXIT_UNREACHABLE
    assert "cannot reach the gateway at 127.0.0.1:9" in capsys.readouterr().err


def test_cli_run_without_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRONGROOM_AGENT_STATE_DIR", str(tmp_path / "nowhere"))
    assert run_cli(["run"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "not enrolled" in err and str(tmp_path / "nowhere" / "agent.json") in err
    assert run_cli(["run", "--state-dir", str(tmp_path), "--roots", "relative"]) == EXIT_USAGE
    assert "--roots must be absolute" in capsys.readouterr().err


async def back_up(client: GrpcGatewayClient, source: Path) -> None:
    fs = common_pb2.Filesystem(mount_point=str(source), device="/dev/vdz", fs_type="ext4")
    finished = await run_backup(
        run_backup_command(), client=client, points=[fs], exclusions=LinuxExclusions(), cancel=asyncio.Event()
    )
    assert finished.status == common_pb2.JOB_STATUS_COMPLETE, finished


@pytest.mark.parametrize("legacy", [False, True], ids=["batched", "old-gateway"])
async def test_backup_and_restore_over_grpc(server: Any, tmp_path: Path, legacy: bool) -> None:
    servicer, address = server
    servicer.legacy_read_chunks = legacy
    source, target = tmp_path / "src", tmp_path / "dst"
    write_file(str(source / "a/file.bin"), os.urandom(200_000), mtime_ns=1_700_000_000_000_000_000)
    write_file(str(source / "b.txt"), b"hello\n" * 1000)
    for i in range(40):
        write_file(str(source / f"small/{i}.txt"), f"small {i}\n".encode() * (i + 1))
    target.mkdir()
    async with open_channel(address, PLAINTEXT) as channel:
        client = GrpcGatewayClient(channel, INSTANCE, SECRET)
        await back_up(client, source)
        point_id = servicer.fake.only_point().point_id
        command = gateway_pb2.RunRestore(restore_job_id="r-1", point_id=point_id, target_path=str(target))
        restored = await run_restore(command, client=client, cancel=asyncio.Event())
        assert restored.status == common_pb2.JOB_STATUS_COMPLETE, restored
        assert servicer.accept_compressed and all(servicer.accept_compressed)
        assert servicer.max_message_bytes and all(servicer.max_message_bytes)
        chunks = len(servicer.fake.chunks)
        if legacy:  # one message per chunk, and the agent takes that too
            assert servicer.read_chunk_messages == chunks
        else:
            assert servicer.read_chunk_messages < chunks / 4
    assert (target / "a/file.bin").read_bytes() == (source / "a/file.bin").read_bytes()
    for i in range(40):
        assert (target / f"small/{i}.txt").read_bytes() == f"small {i}\n".encode() * (i + 1)
    assert os.stat(target / "a/file.bin").st_mtime_ns == 1_700_000_000_000_000_000
    assert (target / "b.txt").read_bytes() == b"hello\n" * 1000


@pytest.mark.parametrize("legacy", [False, True], ids=["batched", "old-gateway"])
async def test_read_chunks_yields_every_position_in_order(
    server: Any, legacy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, address = server
    monkeypatch.setattr(gateway_client, "READ_MESSAGE_BYTES", 7000)  # two chunks of 3000 bytes per message
    servicer.legacy_read_chunks = legacy
    contents = [os.urandom(3000) for _ in range(10)]
    ids = [bytes([i]) * 32 for i in range(10)]
    servicer.fake.chunks.update(zip(ids, contents, strict=True))
    wanted = ids + ids[:3]
    async with open_channel(address, PLAINTEXT) as channel:
        client = GrpcGatewayClient(channel, INSTANCE, SECRET)
        got = [
            (c.chunk_id, decode_chunk(c.data, c.compression, c.raw_length))
            async for c in client.read_chunks("r-1", wanted)
        ]
    assert got == [(c, servicer.fake.chunks[c]) for c in wanted]
    assert servicer.max_message_bytes == [7000]
    assert servicer.read_chunk_messages == (13 if legacy else 7)


async def test_a_read_chunks_message_that_does_not_parse_fails_the_call(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, address = server
    servicer.fake.chunks[b"\x01" * 32] = b"content"

    def refuse(message: bytes) -> list[Any]:
        raise ValueError("a field runs past its message")

    monkeypatch.setattr(gateway_client, "parse_read_chunks", refuse)
    async with open_channel(address, PLAINTEXT) as channel:
        client = GrpcGatewayClient(channel, INSTANCE, SECRET)
        with pytest.raises(GatewayError, match="INTERNAL: a ReadChunks message does not parse: a field runs past"):
            [c async for c in client.read_chunks("r-1", [b"\x01" * 32])]


@pytest.mark.parametrize("legacy", [False, True], ids=["batched", "old-gateway"])
async def test_damaged_chunks_over_grpc_fail_only_their_files(server: Any, tmp_path: Path, legacy: bool) -> None:
    """The agent asks for per-chunk damage; a gateway that does not report it fails the call (the old way)."""
    servicer, address = server
    servicer.legacy_read_chunks = legacy
    source, target = tmp_path / "src", tmp_path / "dst"
    for i in range(20):
        write_file(str(source / f"f{i:02}.txt"), f"file {i}\n".encode() * (i + 1))
    target.mkdir()
    async with open_channel(address, PLAINTEXT) as channel:
        client = GrpcGatewayClient(channel, INSTANCE, SECRET)
        await back_up(client, source)
        point = servicer.fake.only_point()
        [bad] = [e for e in point.entries if e.path == "f05.txt"]
        servicer.fake.damaged[bad.chunk_ids[0]] = "authentication failed"
        command = gateway_pb2.RunRestore(restore_job_id="r-1", point_id=point.point_id, target_path=str(target))
        restored = await run_restore(command, client=client, cancel=asyncio.Event())
    if legacy:
        assert restored.status == common_pb2.JOB_STATUS_FAILED and "is corrupt" in restored.error
        return
    assert restored.status == common_pb2.JOB_STATUS_PARTIAL_COMPLETE, restored
    assert [(f.path, f.reason) for f in restored.failed_files] == [
        ("f05.txt", f"chunk {bad.chunk_ids[0].hex()} of this file is damaged in storage (authentication failed)")
    ]
    assert sorted(os.listdir(target)) == [f"f{i:02}.txt" for i in range(20) if i != 5]
    for i in range(20):
        if i != 5:
            assert (target / f"f{i:02}.txt").read_bytes() == (source / f"f{i:02}.txt").read_bytes()


async def test_wrong_credential_is_a_gateway_error(server: Any) -> None:
    _servicer, address = server
    async with open_channel(address, PLAINTEXT) as channel:
        client = GrpcGatewayClient(channel, INSTANCE, "stolen")
        with pytest.raises(GatewayError) as caught:
            await client.find_missing_chunks("job", [b"x" * 32])
        assert caught.value.code == "UNAUTHENTICATED"


async def test_control_stream_over_grpc(server: Any) -> None:
    servicer, address = server
    await servicer.commands.put(gateway_pb2.AgentCommand(cancel_job=gateway_pb2.CancelJob(job_id="j")))
    async with open_channel(address, PLAINTEXT) as channel:
        stream = GrpcGatewayClient(channel, INSTANCE, SECRET).connect()
        await stream.write(gateway_pb2.AgentReport(hello=gateway_pb2.AgentHello(hostname="h")))
        command = await stream.read()
        assert command is not None and command.cancel_job.job_id == "j"
        assert (await servicer.reports.get()).hello.hostname == "h"
        await servicer.commands.put(None)
        assert await stream.read() is None
        stream.cancel()


async def test_agent_process_runs_a_backup_and_stops_on_sigterm(server: Any, tmp_path: Path) -> None:
    servicer, address = server
    state_dir, source = tmp_path / "state", tmp_path / "src"
    write_file(str(source / "f.txt"), b"served by a real agent process\n" * 100)
    await _enroll(address, TOKEN, str(state_dir), PLAINTEXT, None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strongroom_agent",
        "run",
        "--state-dir",
        str(state_dir),
        "--roots",
        str(source),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        hello = await asyncio.wait_for(servicer.reports.get(), 30)
        assert hello.WhichOneof("report") == "hello" and hello.hello.agent_version
        await servicer.commands.put(gateway_pb2.AgentCommand(run_backup=run_backup_command("job-cli")))
        while (report := await asyncio.wait_for(servicer.reports.get(), 30)).WhichOneof("report") != "finished":
            pass
        assert report.finished.job_id == "job-cli"
        assert report.finished.status == common_pb2.JOB_STATUS_COMPLETE, report.finished
        point = servicer.fake.only_point()
        assert point.filesystem.mount_point == str(source)
        assert [e.path for e in point.entries] == ["", "f.txt"]
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr


async def test_writing_to_a_finished_control_stream_is_a_gateway_error() -> None:
    import asyncio as _asyncio

    from strongroom_agent.gateway_client import GatewayError as _GatewayError
    from strongroom_agent.gateway_client import _GrpcControlStream

    class Finished:
        async def write(self, report: object) -> None:
            raise _asyncio.InvalidStateError("RPC already finished.")

    stream = _GrpcControlStream(Finished())  # type: ignore[arg-type]
    with pytest.raises(_GatewayError) as err:
        await stream.write(gateway_pb2.AgentReport())
    assert err.value.code == "UNAVAILABLE"


async def test_a_locally_cancelled_control_stream_reads_as_a_gateway_error(server: Any) -> None:
    _servicer, address = server
    async with open_channel(address, PLAINTEXT) as channel:
        stream = GrpcGatewayClient(channel, INSTANCE, SECRET).connect()
        await stream.write(gateway_pb2.AgentReport(hello=gateway_pb2.AgentHello(hostname="h")))
        stream.cancel()  # as an interrupted write elsewhere would: the call is gone, the reader is not
        with pytest.raises(GatewayError) as err:
            await stream.read()
        assert err.value.code == "CANCELLED"
