"""Issue 9 ("Verify") on the real stack: `strongroom verify` finds a flipped byte and lists the damaged files by path.

The five services run with TLS and the filesystem object store (as in test_damaged_restore: the
pinned version's bytes are corrupted where they live, since Object Lock keeps them immutable through
S3). The CLI runs as an operator would run it, in its own process, against the gateway's public
listener.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from strongroom_platform.admin import create_admin_token
from strongroom_platform.certs import CA_CERT_FILE
from strongroom_testing.fixtures import PgLogins
from test_backup_restore import Platform, backup, enrolled_instance, running_platform, versions_with_points
from test_damaged_restore import make_files, version_file

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]


async def strongroom(platform: Platform, token: str, *argv: str) -> tuple[int, str]:
    """Run the `strongroom` CLI against the stack; (exit code, stdout + stderr)."""
    env = {
        **platform.env,
        "STRONGROOM_GATEWAY_ADDR": platform.stack.addresses["gateway"],
        "STRONGROOM_TOKEN": token,
        "STRONGROOM_TLS_CA": str(platform.tls_dir / CA_CERT_FILE),
    }
    env.pop("STRONGROOM_INSECURE_PLAINTEXT", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strongroom_cli",
        "--timeout",
        "60",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


def field(out: str, label: str) -> str:
    for line in out.splitlines():
        if line.startswith(label + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {label!r} line in {out!r}")


async def test_verify_finds_a_flipped_byte_and_lists_the_damaged_files(
    stack_kafka: str, pg_logins: PgLogins, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "objects"
    settings = {"STRONGROOM_OBJECT_STORE": f"file:{store}", "STRONGROOM_GATEWAY_PACK_BYTES": str(1 << 20)}
    source = tmp_path / "source"
    by_size = make_files(source)
    async with running_platform(stack_kafka, pg_logins, tmp_path, settings) as platform:
        token = await create_admin_token(pg_logins.owner, "acme")
        instance_id, agent = await enrolled_instance(platform, source, tmp_path / "agent-state")
        try:
            await backup(platform, instance_id)
            [version] = await versions_with_points(platform, instance_id, 1)
            [point] = version.points
        finally:
            await agent.stop()

        # A clean point verifies clean.
        started = time.perf_counter()
        code, out = await strongroom(platform, token, "verify", "point", point.point_id, "--wait")
        clean_seconds = time.perf_counter() - started
        assert code == 0, out
        assert field(out, "State") == "clean"
        assert field(out, "Damaged files") == "0"
        packs_read = field(out, "Packs read")

        # One byte flipped in one blob of the pack that holds the chunk two files share.
        conn = await asyncpg.connect(pg_logins.owner)
        try:
            rows = await conn.fetch(
                'SELECT c.chunk_id, c."offset", c.length, c.raw_length, p.object_key, p.version_id, p.pack_id'
                " FROM gateway.chunks c JOIN gateway.packs p USING (pack_id)"
            )
        finally:
            await conn.close()
        [shared] = [r for r in rows if len(by_size.get(r["raw_length"], [])) == 2]
        path = version_file(store, shared["object_key"], shared["version_id"])
        os.chmod(path, 0o600)
        with path.open("r+b") as pack:
            pack.seek(shared["offset"] + shared["length"] // 2)
            byte = pack.read(1)
            pack.seek(-1, os.SEEK_CUR)
            pack.write(bytes([byte[0] ^ 0x01]))
        damaged = sorted(by_size[shared["raw_length"]])  # the file and its copy

        code, out = await strongroom(platform, token, "verify", "instance", instance_id, "--wait")
        assert code == 1, out  # damage found
        assert field(out, "State") == "damaged"
        assert field(out, "Damaged files") == "2"
        assert field(out, "Damaged packs") == "1"
        reason = f"chunk {shared['chunk_id'].hex()} of this file is damaged in storage (authentication failed)"
        listed = out.split("Damaged files:\n", 1)[1].split("Damaged packs:\n", 1)
        assert listed[0].splitlines() == [f"  {point.point_id}  {p}: {reason}" for p in damaged]
        assert listed[1].startswith(f"  {shared['pack_id']}: the object does not hash to its pack id")

        code, out = await strongroom(platform, token, "verify", "status")
        assert code == 0, out
        [row] = out.splitlines()[1:]
        assert row.split()[:2] == [instance_id, point.point_id]
        assert row.split()[-2:] == ["2", "1"]  # damaged files of the newest verified point, damaged points

        # Another account's operator sees none of it.
        other = await create_admin_token(pg_logins.owner, "other")
        code, out = await strongroom(platform, other, "verify", "point", point.point_id)
        assert code == 1 and "NOT_FOUND" in out, out
    with capsys.disabled():
        print(
            f"\nverify: clean point ({packs_read}) in {clean_seconds:.1f} s including the CLI's start;"
            f" after one flipped byte: {damaged} listed damaged"
        )
