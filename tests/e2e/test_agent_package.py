"""The strongroom-agent package in a clean Debian root filesystem (ADR 0045): apt installs it (with
dpkg) from the signed apt repository ``make packages`` lays out,
``systemd-analyze verify`` accepts its unit, the packaged agent (started directly under chroot, in
the host's network namespace) enrolls with the real stack and backs up; "cancel backups" makes it
uninstall itself (dpkg --purge), and the root filesystem's file list is as before the install.

Needs root (chroot, a private mount namespace for /proc), and mmdebstrap, nfpm and Go as the
package scripts do (they install or build what is missing). Prints the transcript the issue asks
for (run with ``-s`` to see it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from strongroom.common.v1 import common_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_platform.certs import CA_CERT_FILE, spki_sha256
from test_backup_restore import Platform, backup, eventually, make_tree

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0, reason="needs root on Linux"),
    pytest.mark.timeout(900),
]

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOT / "tools" / "packages"
UNIT = "/usr/lib/systemd/system/strongroom-agent.service"
# dpkg's own bookkeeping changes with every install (its status file is compared by content below).
BOOKKEEPING = {
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/available-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
    "var/lib/dpkg/triggers/Unincorp-old",
    "var/log/dpkg.log",
}


class Transcript:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.monotonic()

    def note(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {text}"
        print(line, flush=True)
        with self.path.open("a") as out:
            out.write(line + "\n")


def tool(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a packaging script; its last stdout line."""
    done = subprocess.run(
        [sys.executable, str(PACKAGES / script), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def file_list(root: Path) -> set[str]:
    """Every path in the root filesystem, but /proc, /dev, /tmp, /run and dpkg's bookkeeping."""
    found: set[str] = set()
    for directory, dirs, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        if relative.split(os.sep)[0] in {"proc", "dev", "tmp", "run", "srv"}:
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.normpath(os.path.join(relative, name))
            if path not in BOOKKEEPING:
                found.add(path)
    return found


def in_chroot(root: Path, command: str) -> list[str]:
    """argv running ``command`` (shell) under chroot with its own /proc, in a private mount namespace
    (the mount goes away with the last process in it); same network namespace as the stack."""
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" /bin/sh -c "$1"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root), command]


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, env=env)


def run_in_chroot(root: Path, command: str, transcript: Transcript) -> str:
    done = run(in_chroot(root, command))
    output = (done.stdout + done.stderr).strip()
    transcript.note(f"# {command}  (exit {done.returncode})\n{output}" if output else f"# {command}  (exit 0)")
    assert done.returncode == 0, output
    return output


@dataclass
class Artifacts:
    tarball: str
    packages: str
    seconds: float


@pytest.fixture
def artifacts(tmp_path: Path) -> Iterator[concurrent.futures.Future[Artifacts]]:
    """The root filesystem and the signed packages, built while the platform fixture starts the stack
    (this fixture comes first in the test's arguments)."""
    # A throwaway signing key: the repositories are signed as a release would be.
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    signing = {**os.environ, "GNUPGHOME": str(gnupg), "STRONGROOM_PACKAGE_SIGNING_KEY": "test@strongroom.localhost"}
    generate = ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "Strongroom test <test@strongroom.localhost>"]

    def build() -> Artifacts:
        started = time.monotonic()
        done = run([*generate, "ed25519", "sign", "never"], signing)
        assert done.returncode == 0, done.stderr
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            tarball = pool.submit(tool, "rootfs.py")
            packages = pool.submit(tool, "build.py", "--out", str(tmp_path / "dist"), env=signing)
            return Artifacts(tarball.result(), packages.result(), time.monotonic() - started)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(build)
        yield future
        future.result()  # never leave the build running past the test


async def test_package_install_backup_cancel_uninstall(
    artifacts: concurrent.futures.Future[Artifacts], platform: Platform, tmp_path: Path
) -> None:
    transcript = Transcript(tmp_path / "transcript.log")
    started = time.monotonic()
    for needed in ("chroot", "unshare", "dpkg-deb", "systemd-analyze"):
        assert shutil.which(needed), f"{needed} is missing"
    built = await asyncio.wrap_future(artifacts)
    tarball, packages, dist = built.tarball, built.packages, tmp_path / "dist"
    transcript.note(f"root filesystem and packages ready (built in {built.seconds:.0f} s, beside the stack's start)")
    deb = Path(packages.split()[1])
    rpm = Path(packages.split()[2])
    transcript.note(
        f"built {deb.name} ({deb.stat().st_size / 1e6:.1f} MB), {rpm.name} ({rpm.stat().st_size / 1e6:.1f} MB)"
    )

    root = tmp_path / "root"
    root.mkdir()
    await asyncio.to_thread(run, ["tar", "-xf", tarball, "-C", str(root), "--numeric-owner"])
    before = file_list(root)
    status_before = (root / "var/lib/dpkg/status").read_text()
    transcript.note(f"clean Debian root filesystem: {len(before)} paths")

    # The published apt repository, as a file: source of the root filesystem (no network needed):
    # apt checks its signature with the exported key and installs the package with dpkg.
    shutil.copytree(dist, root / "tmp" / "dist")
    for directory in ("lists/partial", "cache/archives/partial", "log"):
        (root / "tmp" / "apt" / directory).mkdir(parents=True)
    (root / "tmp" / "strongroom.list").write_text(
        "deb [signed-by=/tmp/dist/strongroom.asc] file:/tmp/dist/apt stable main\n"
    )
    only_ours = " ".join(
        [
            "-o Dir::Etc::sourcelist=/tmp/strongroom.list -o Dir::Etc::sourceparts=-",
            "-o Dir::State::Lists=/tmp/apt/lists -o Dir::Cache=/tmp/apt/cache -o Dir::Log=/tmp/apt/log",
            "-o Dpkg::Use-Pty=0",
        ]
    )
    install = f"apt-get {only_ours} update && apt-get {only_ours} install -y strongroom-agent"
    await asyncio.to_thread(run_in_chroot, root, install, transcript)
    # What the install-and-enroll command does after the install (offline here: no systemd running).
    await asyncio.to_thread(run_in_chroot, root, "systemctl enable strongroom-agent.service", transcript)
    assert (root / "etc/systemd/system/multi-user.target.wants/strongroom-agent.service").is_symlink()

    verify = await asyncio.to_thread(run, ["systemd-analyze", "verify", f"--root={root}", UNIT])
    transcript.note(f"# systemd-analyze verify --root=ROOT {UNIT}  (exit {verify.returncode}) {verify.stderr.strip()}")
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    source = root / "srv" / "data"
    make_tree(source)
    ca_file = platform.tls_dir / CA_CERT_FILE
    shutil.copy2(ca_file, root / "tmp" / "gateway-ca.pem")
    activated = await platform.scheduler.ActivateBackup(
        scheduler_pb2.ActivateBackupRequest(
            account_id="acme",
            name="packaged",
            region="local",
            has_settings=True,
            settings=scheduler_pb2.BackupSettings(
                priority=common_pb2.BACKUP_PRIORITY_HIGH,
                daily_start_minute=120,
                keep_latest_version=True,
                roots=["/srv/data"],  # the path inside the root filesystem the agent runs in
            ),
        )
    )
    instance_id = activated.instance.instance_id
    gateway = platform.stack.addresses["gateway"]
    enroll = shlex.join(
        [
            "strongroom-agent", "enroll", "--gateway", gateway, "--token", activated.enrollment_token,
            "--ca-file", "/tmp/gateway-ca.pem", "--pin", spki_sha256(ca_file.read_bytes()),
        ]
    )  # fmt: skip

    async def enrolled() -> bool:
        done = await asyncio.to_thread(run, in_chroot(root, enroll))
        if done.returncode == 0:
            transcript.note(
                f"# strongroom-agent enroll --gateway {gateway} --token ...  (exit 0)\n{done.stdout.strip()}"
            )
        return done.returncode == 0

    await eventually("the packaged agent's enrollment", enrolled, within=120)
    assert (root / "var/lib/strongroom-agent/agent.json").is_file()

    agent_log = tmp_path / "agent.log"
    with agent_log.open("wb") as log_file:
        agent = await asyncio.create_subprocess_exec(
            *in_chroot(root, "exec /opt/strongroom/agent/bin/strongroom-agent run"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "STRONGROOM_LOG_FORMAT": "text"},
        )
    try:
        job = await backup(platform, instance_id)
        transcript.note(f"backup job {job.job_id}: {common_pb2.JobStatus.Name(job.status)}")

        await platform.scheduler.CancelBackup(scheduler_pb2.InstanceRef(instance_id=instance_id))
        transcript.note(f"canceled backup of instance {instance_id}")

        async def uninstalled() -> bool:
            return agent.returncode is not None and not (root / "var/lib/dpkg/info/strongroom-agent.list").exists()

        await eventually("the agent to uninstall its package", uninstalled, within=120)

        # The detached dpkg --purge finishes after the agent exited; wait for its last step.
        async def purged() -> bool:
            return not (root / "opt/strongroom").exists() and not (root / "var/lib/strongroom-agent").exists()

        await eventually("dpkg --purge to finish", purged, within=60)
        assert agent.returncode == 0
    finally:
        if agent.returncode is None:
            agent.terminate()
            await asyncio.wait_for(agent.wait(), 30)
    await asyncio.sleep(1)  # the purge's last line reaches the log
    log_text = agent_log.read_text(errors="replace")
    transcript.note("agent log (its detached dpkg --purge writes to the same output):\n" + log_text.strip())
    assert "removing package strongroom-agent: dpkg --purge strongroom-agent" in log_text
    assert "Purging configuration files for strongroom-agent" in log_text

    after = file_list(root)
    status = await asyncio.to_thread(run, in_chroot(root, "dpkg -s strongroom-agent"))
    assert status.returncode != 0, status.stdout
    assert (root / "var/lib/dpkg/status").read_text() == status_before
    assert after == before, {"left behind": sorted(after - before)[:20], "removed": sorted(before - after)[:20]}
    transcript.note(f"after the purge: {len(after)} paths, the same as before the install; dpkg -s: not installed")
    transcript.note(f"test took {time.monotonic() - started:.0f} s")
