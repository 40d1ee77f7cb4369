"""The ``strongroom-gateway`` process: starts against real servers, announces itself, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
import pytest
from strongroom.agent.v1 import gateway_pb2, gateway_pb2_grpc
from strongroom_testing.fixtures import PgLogins
from strongroom_testing.pki import LocalPki

pytestmark = pytest.mark.integration


async def test_process_serves_and_stops_on_sigterm(
    pg_logins: PgLogins, kafka_bootstrap: str, local_pki: LocalPki, tmp_path: Path
) -> None:
    env = dict(
        os.environ,
        STRONGROOM_KAFKA_BOOTSTRAP=kafka_bootstrap,
        STRONGROOM_OBJECT_STORE=f"file:{tmp_path / 'objects'}",
        STRONGROOM_GRPC_LISTEN="127.0.0.1:0",
        STRONGROOM_MASTER_KEY_FILE=str(tmp_path / "master.key"),
        STRONGROOM_TLS_CERT=local_pki.env("gateway")["STRONGROOM_TLS_CERT"],
        STRONGROOM_TLS_KEY=local_pki.env("gateway")["STRONGROOM_TLS_KEY"],
        **pg_logins.env("gateway"),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strongroom_gateway",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 120)).decode()
        assert line.startswith("LISTENING gateway 127.0.0.1:"), line + (await process.stderr.read(4000)).decode()
        address = line.split()[2]
        agent_tls = grpc.ssl_channel_credentials(root_certificates=local_pki.ca_file.read_bytes())
        async with grpc.aio.secure_channel(address, agent_tls) as channel:
            stub = gateway_pb2_grpc.AgentGatewayServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Enroll(gateway_pb2.EnrollRequest(enrollment_token="unknown"), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        assert await process.stdout.read() == b""  # exactly one line on stdout
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_process_without_a_master_key_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_MASTER_KEY")} | {
        "STRONGROOM_PG_DSN": "postgresql://unused@127.0.0.1:1/x",
        "STRONGROOM_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "STRONGROOM_OBJECT_STORE": f"file:{tmp_path}",
        "STRONGROOM_INSECURE_PLAINTEXT": "1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strongroom_gateway",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode != 0 and stdout == b""
    assert b"STRONGROOM_MASTER_KEY is required" in stderr, stderr.decode()[-2000:]


async def test_process_creates_the_key_file_0600_and_reuses_it(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    env = dict(
        os.environ,
        STRONGROOM_PG_DSN="postgresql://unused@127.0.0.1:1/x",
        STRONGROOM_KAFKA_BOOTSTRAP="127.0.0.1:1",
        STRONGROOM_OBJECT_STORE=f"file:{tmp_path / 'objects'}",
        STRONGROOM_MASTER_KEY_FILE=str(key_file),
        STRONGROOM_INSECURE_PLAINTEXT="1",
    )

    async def start_once() -> bytes:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "strongroom_gateway",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.wait_for(process.communicate(), 60)  # then fails at the database: the key comes first
        assert key_file.stat().st_mode & 0o777 == 0o600
        return key_file.read_bytes()

    assert await start_once() == await start_once()


async def test_process_without_tls_refuses_to_listen_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_TLS", "STRONGROOM_INSECURE"))} | {
        "STRONGROOM_PG_DSN": "postgresql://unused@127.0.0.1:1/x",
        "STRONGROOM_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "STRONGROOM_OBJECT_STORE": f"file:{tmp_path}",
        "STRONGROOM_MASTER_KEY_FILE": str(tmp_path / "master.key"),
    }
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strongroom_gateway",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 2, err.decode()
    assert b"plaintext needs STRONGROOM_INSECURE_PLAINTEXT=1" in err and b"Traceback" not in err
    assert out == b""
