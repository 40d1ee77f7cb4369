"""The service process helpers of ``strongroom_platform.runtime``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from strongroom_platform.runtime import serve_grpc, service_main
from strongroom_platform.settings import env_str


async def test_serve_grpc_announces_the_bound_port(capsys: pytest.CaptureFixture[str]) -> None:
    server = await serve_grpc("probe", "127.0.0.1:0", lambda _server: None)
    try:
        line = capsys.readouterr().out.strip()
        assert line.startswith("LISTENING probe 127.0.0.1:")
        assert int(line.rsplit(":", 1)[1]) > 0
    finally:
        await server.stop(None)


def test_service_main_exits_2_naming_the_bad_setting(capsys: pytest.CaptureFixture[str]) -> None:
    def from_env(environ: Mapping[str, str]) -> str:
        return env_str({}, "STRONGROOM_PROBE")

    async def run(settings: str, stop: asyncio.Event) -> None:
        raise AssertionError("must not run with bad settings")

    with pytest.raises(SystemExit) as exited:
        service_main("probe", from_env, run)
    assert exited.value.code == 2
    assert "strongroom-probe: environment variable STRONGROOM_PROBE is required" in capsys.readouterr().err
