"""The edge as a process would run it: HTTPS with the service certificate, the OpenAPI document,
health, and the gRPC call to a real (fake-backed) gRPC server carrying the caller's token."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
import yarl
from strongroom.billing.v1 import billing_pb2, billing_pb2_grpc
from strongroom_api import bootstrap
from strongroom_api.backends import GrpcInvoker, open_channel
from strongroom_api.edge import Invoke
from strongroom_api.rules import Router, load_routes
from strongroom_api.settings import Settings
from strongroom_platform.settings import SettingsError
from strongroom_platform.testing import FakeClock
from strongroom_testing.pki import LocalPki

BACKENDS = {name: "127.0.0.1:1" for name in ("scheduler", "catalog", "restore", "billing", "gateway")}


class Billing(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self) -> None:
        self.metadata: list[tuple[str, str]] = []

    async def ListPlans(self, request: Any, context: Any) -> billing_pb2.ListPlansResponse:
        self.metadata = [(k, v) for k, v in context.invocation_metadata() if k == "authorization"]
        self.peer_cert = context.auth_context().get("x509_pem_cert")
        return billing_pb2.ListPlansResponse(plans=[billing_pb2.Plan(plan_id="p-1", account_id=request.account_id)])


@contextlib.asynccontextmanager
async def grpc_billing(pki: LocalPki, servicer: Billing) -> AsyncIterator[str]:
    server = grpc.aio.server()
    billing_pb2_grpc.add_BillingServiceServicer_to_server(servicer, server)
    from strongroom_platform.tls import server_credentials

    # a public listener, as the services have: server TLS, no client certificate asked for
    public = dataclasses.replace(pki.tls("billing"), client_ca_file=None)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(public))
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def running_edge(
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    *,
    clock: FakeClock | None = None,
    invoke: Invoke | None = None,
) -> AsyncIterator[str]:
    """The edge serving until the block ends; yields the host:port it announced."""
    stop = asyncio.Event()
    task = asyncio.create_task(bootstrap.run(settings, stop, clock=clock or FakeClock(), invoke=invoke))
    try:
        for _ in range(200):
            out = capsys.readouterr().out
            if "LISTENING api " in out:
                yield out.split("LISTENING api ", 1)[1].split()[0]
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the edge did not announce its address")
    finally:
        stop.set()
        await task


def settings_for(pki: LocalPki, backends: dict[str, str]) -> Settings:
    environ = {f"STRONGROOM_{name.upper()}_ADDR": address for name, address in backends.items()}
    environ.update(
        STRONGROOM_TLS_CERT=str(pki.directory / "api.pem"),
        STRONGROOM_TLS_KEY=str(pki.directory / "api-key.pem"),
        STRONGROOM_TLS_CA=str(pki.ca_file),
    )
    return Settings.from_env(environ)


@pytest.fixture
def pki(tmp_path: Path) -> LocalPki:
    from strongroom_platform.certs import ensure_local_pki

    ensure_local_pki(tmp_path / "tls", ("api", "billing"))
    return LocalPki(tmp_path / "tls")


async def test_https_edge_serves_openapi_health_and_forwards_the_token(
    pki: LocalPki, capsys: pytest.CaptureFixture[str]
) -> None:
    servicer = Billing()
    async with grpc_billing(pki, servicer) as billing_address:
        settings = settings_for(pki, {**BACKENDS, "billing": billing_address})
        async with running_edge(settings, capsys) as address:
            context = ssl.create_default_context(cafile=str(pki.ca_file))
            async with aiohttp.ClientSession(f"https://{address}") as session:
                async with session.get("/openapi.yaml", ssl=context) as response:
                    assert response.status == 200
                    document = yaml.safe_load(await response.read())
                    assert document["info"]["title"] == "Strongroom operator API"
                async with session.get("/healthz", ssl=context) as response:
                    assert response.status == 200 and (await response.json()) == {"status": "SERVING"}
                headers = {"Authorization": "Bearer sr_abc"}
                async with session.get("/v1/billing/plans?account_id=acme", ssl=context, headers=headers) as response:
                    assert response.status == 200
                    assert (await response.json())["plans"][0] == {
                        "plan_id": "p-1",
                        "account_id": "acme",
                        "gib_days": "",
                        "used_gib_days": "",
                        "starts_on": "",
                        "ends_on": "",
                    }
                big = b"{" + b" " * (settings.max_body_bytes + 1) + b"}"
                post = session.post("/v1/billing/plans", ssl=context, headers=headers, data=io.BytesIO(big))
                async with post as response:
                    assert response.status == 413
                    assert (await response.json())["error"]["code"] == "INVALID_ARGUMENT"
                odd = yarl.URL(f"https://{address}/v1/no%0Awhere%C2%99", encoded=True)
                async with session.post(odd, ssl=context, headers=headers) as response:
                    assert response.status == 404 and response.content_type == "application/json"
                    assert (await response.json())["error"]["code"] == "NOT_FOUND"
                with pytest.raises(aiohttp.ClientError):  # no plain HTTP on the TLS port
                    async with session.get(f"http://{address}/healthz") as response:
                        await response.read()
    # the caller's own credential, and no certificate of the edge's: it holds no privilege
    assert servicer.metadata == [("authorization", "Bearer sr_abc")]
    assert not servicer.peer_cert


async def test_an_unreachable_service_is_503(pki: LocalPki, capsys: pytest.CaptureFixture[str]) -> None:
    invoke = GrpcInvoker(
        {"billing": open_channel("127.0.0.1:1", ca_pem=pki.ca_file.read_bytes(), insecure_plaintext=False)},
        timeout=5,
    )
    from strongroom_api import edge
    from strongroom_api.idempotency import MemoryIdempotencyStore

    answer = await edge.handle(
        edge.HttpRequest("GET", "/v1/billing/overview", headers={"authorization": "Bearer x"}),
        router=Router(load_routes()),
        invoke=invoke,
        store=MemoryIdempotencyStore(),
        clock=FakeClock(),
    )
    assert answer.status == 503 and b"UNAVAILABLE" in answer.body


def test_settings_refuse_plaintext_and_missing_addresses(pki: LocalPki) -> None:
    environ = {f"STRONGROOM_{name.upper()}_ADDR": a for name, a in BACKENDS.items()}
    with pytest.raises(SettingsError, match="no TLS certificate"):
        Settings.from_env(environ)
    assert Settings.from_env({**environ, "STRONGROOM_INSECURE_PLAINTEXT": "1"}).insecure_plaintext
    del environ["STRONGROOM_GATEWAY_ADDR"]
    with pytest.raises(SettingsError, match="STRONGROOM_GATEWAY_ADDR"):
        Settings.from_env({**environ, "STRONGROOM_INSECURE_PLAINTEXT": "1"})
    with pytest.raises(SettingsError, match="host:port"):
        Settings.from_env({**BACKENDS_ENV, "STRONGROOM_INSECURE_PLAINTEXT": "1", "STRONGROOM_API_LISTEN": "nope"})


BACKENDS_ENV = {f"STRONGROOM_{name.upper()}_ADDR": a for name, a in BACKENDS.items()}
