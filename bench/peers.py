"""Peer backup tools: install (cached) and drive restic, kopia, rustic and borg.

    uv run python bench/peers.py install [--peers restic,kopia,rustic,borg]

Installs into ``${STRONGROOM_CACHE:-~/.cache/strongroom}/bench/<tool>-<version>/`` and marks a
finished install with ``.complete``:

* restic, kopia: Go module proxy, ``GOTOOLCHAIN=local CGO_ENABLED=0``. restic via ``go install``;
  kopia's ``go install`` refuses here because the proxy does not serve kopia's version *list*
  (needed for the deprecation check), so the pinned version is ``go mod download``-ed and built with
  ``go build`` in its module directory — same source, same flags.
* rustic: ``cargo install rustic-rs --locked`` (several minutes on 2 cores, once).
* borg: ``borgbackup`` from PyPI in its own venv (PyPI has only the sdist for Linux, so the C
  libraries' headers are installed with apt-get first).

Versions are pinned to the newest release known when this was written (the registries' version
lists are not reachable for every tool here); ``PEER_VERSIONS`` is the one place to bump them.

Each ``Peer`` runs one repository (S3 bucket on the benchmark's versitygw, or a local dir) and
measures every command with ``run_measured``: wall time (``perf_counter``), peak RSS and CPU time of
the child (``os.wait4`` rusage).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataset import cache_dir  # noqa: E402

PEER_VERSIONS = {
    "restic": "v0.18.1",
    "kopia": "v0.22.3",
    "rustic": "0.11.4",
    "borg": "1.4.5",
}
PASSWORD = "strongroom-bench"


@dataclass
class Measured:
    wall: float
    peak_rss: int  # bytes
    cpu: float  # user + system seconds
    stdout: str = ""


def _vm_hwm(pid: int) -> int:
    """The process' peak RSS so far (VmHWM, bytes); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Measured:
    """Run ``argv``; wall time around the child, its peak RSS (VmHWM) and CPU time (``wait4``).

    Peak RSS is sampled from ``/proc/<pid>/status`` every 10 ms, not taken from
    ``ru_maxrss``: Linux carries the forking process' RSS into the child's
    ``ru_maxrss`` across exec, so every peer reported at least the benchmark
    driver's own ~300 MB.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    peaks = [0]
    exited = threading.Event()

    def sample() -> None:  # in a thread, so that the wall time ends exactly at exit
        while not exited.wait(0.01):
            peaks.append(_vm_hwm(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    exited.set()
    sampler.join()
    reader.join()
    peak = max(peaks)
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = b"".join(chunks).decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... exited {proc.returncode}:\n{text[-3000:]}")
    return Measured(wall, peak, usage.ru_utime + usage.ru_stime, text)


# ---------------------------------------------------------------- install


def _dir(tool: str) -> Path:
    return cache_dir() / f"{tool}-{PEER_VERSIONS[tool]}"


def _go_env() -> dict[str, str]:
    return {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}


def _install_restic(dest: Path) -> None:
    env = {**_go_env(), "GOBIN": str(dest / "bin")}
    subprocess.run(
        ["go", "install", f"github.com/restic/restic/cmd/restic@{PEER_VERSIONS['restic']}"], env=env, check=True
    )


def _install_kopia(dest: Path) -> None:
    env = _go_env()
    module = f"github.com/kopia/kopia@{PEER_VERSIONS['kopia']}"
    info = json.loads(
        subprocess.run(["go", "mod", "download", "-json", module], env=env, check=True, capture_output=True).stdout
    )
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["go", "build", "-trimpath", "-o", str(dest / "bin" / "kopia"), "."], cwd=info["Dir"], env=env, check=True
    )


def _install_rustic(dest: Path) -> None:
    argv = ["cargo", "install", "rustic-rs", "--version", PEER_VERSIONS["rustic"], "--locked", "--root", str(dest)]
    subprocess.run(argv, check=True)


def _install_borg(dest: Path) -> None:
    headers = ["liblz4-dev", "libzstd-dev", "libxxhash-dev", "libacl1-dev", "libssl-dev", "pkg-config"]
    subprocess.run(
        ["apt-get", "install", "-y", "-q", *headers],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    venv = dest / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"borgbackup=={PEER_VERSIONS['borg']}"], check=True)
    (dest / "bin").mkdir(exist_ok=True)
    link = dest / "bin" / "borg"
    if not link.exists():
        link.symlink_to(venv / "bin" / "borg")


INSTALLERS = {"restic": _install_restic, "kopia": _install_kopia, "rustic": _install_rustic, "borg": _install_borg}


def binary(tool: str) -> Path:
    name = {"restic": "restic", "kopia": "kopia", "rustic": "rustic", "borg": "borg"}[tool]
    return _dir(tool) / "bin" / name


def ensure(tool: str) -> Path:
    """Install ``tool`` once (cached); return its binary. Raises on a failed build."""
    dest = _dir(tool)
    exe = binary(tool)
    if tool == "borg" and not exe.exists() and (dest / "venv" / "bin" / "borg").exists():
        (dest / "bin").mkdir(exist_ok=True)
        exe.symlink_to(dest / "venv" / "bin" / "borg")
    if not ((dest / ".complete").exists() or exe.exists()):
        dest.mkdir(parents=True, exist_ok=True)
        INSTALLERS[tool](dest)
    if not exe.exists():
        raise RuntimeError(f"{tool}: no binary at {exe} after install")
    (dest / ".complete").touch()
    return exe


def version_of(tool: str) -> str:
    if tool == "kopia":  # a go build without the release ldflags reports "v0-unofficial"
        return f"kopia {PEER_VERSIONS['kopia']} (module build)"
    exe = binary(tool)
    args = {"restic": ["version"], "kopia": ["--version"], "rustic": ["--version"], "borg": ["--version"]}[tool]
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, check=False).stdout.strip()
    return out.splitlines()[0] if out else PEER_VERSIONS[tool]


# ---------------------------------------------------------------- drivers


@dataclass
class S3Target:
    endpoint: str  # host:port
    access_key: str
    secret_key: str
    bucket: str
    ca_file: Path | None = None  # HTTPS verified against this CA; None: plain HTTP

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://{self.endpoint}"


@dataclass
class Peer:
    """One repository of one tool. ``work`` holds its config, cache and (for local) the repository."""

    tool: str
    work: Path
    s3: S3Target | None = None
    exe: Path = field(init=False)

    def __post_init__(self) -> None:
        self.exe = binary(self.tool)
        self.work.mkdir(parents=True, exist_ok=True)

    @property
    def target(self) -> str:
        return "s3" if self.s3 else "local"

    @property
    def repo_dir(self) -> Path:
        return self.work / "repo"

    # -- environment and command lines per tool

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RESTIC_PASSWORD=PASSWORD,
            RUSTIC_PASSWORD=PASSWORD,
            KOPIA_PASSWORD=PASSWORD,
            BORG_PASSPHRASE=PASSWORD,
            BORG_BASE_DIR=str(self.work / "borg-base"),
            KOPIA_CHECK_FOR_UPDATES="false",
            RESTIC_CACHE_DIR=str(self.work / "cache"),
            XDG_CONFIG_HOME=str(self.work / "config"),
        )
        if self.s3:
            env.update(AWS_ACCESS_KEY_ID=self.s3.access_key, AWS_SECRET_ACCESS_KEY=self.s3.secret_key)
            if self.s3.ca_file:
                # rustic (opendal over reqwest) has no CA option of its own; it reads the roots here.
                env.update(RESTIC_CACERT=str(self.s3.ca_file), SSL_CERT_FILE=str(self.s3.ca_file))
        return env

    def _restic_repo(self) -> list[str]:
        if self.s3:
            return ["-r", f"s3:{self.s3.url}/{self.s3.bucket}", "-o", "s3.bucket-lookup=path"]
        return ["-r", str(self.repo_dir)]

    def _rustic_repo(self) -> list[str]:
        base = ["--no-progress", "--cache-dir", str(self.work / "cache")]
        if self.s3:
            # rustic takes backend options only from a profile file: <XDG_CONFIG_HOME>/rustic/bench.toml
            s3 = self.s3
            profile = self.work / "config" / "rustic" / "bench.toml"
            profile.parent.mkdir(parents=True, exist_ok=True)
            profile.write_text(
                "[repository]\n"
                'repository = "opendal:s3"\n'
                "[repository.options]\n"
                f'bucket = "{s3.bucket}"\n'
                f'endpoint = "{s3.url}"\n'
                'region = "us-east-1"\n'
                f'access_key_id = "{s3.access_key}"\n'
                f'secret_access_key = "{s3.secret_key}"\n'
                'root = "/"\n'
            )
            return ["-P", "bench", *base]
        return base + ["-r", str(self.repo_dir)]

    def _kopia(self) -> list[str]:
        return [str(self.exe), "--config-file", str(self.work / "kopia.config")]

    def _borg_repo(self) -> str:
        return str(self.repo_dir)

    def _run(self, argv: list[str], cwd: Path | None = None) -> Measured:
        return run_measured(argv, env=self._env(), cwd=cwd)

    # -- operations

    def init(self) -> None:
        exe = str(self.exe)
        if self.tool == "restic":
            self._run([exe, *self._restic_repo(), "init"])
        elif self.tool == "rustic":
            self._run([exe, *self._rustic_repo(), "init"])
        elif self.tool == "kopia":
            cache = ["--cache-directory", str(self.work / "cache")]
            if self.s3:
                s3 = self.s3
                where = ["s3", "--bucket", s3.bucket, "--endpoint", s3.endpoint]
                where += ["--root-ca-pem-path", str(s3.ca_file)] if s3.ca_file else ["--disable-tls"]
                where += ["--access-key", s3.access_key, "--secret-access-key", s3.secret_key]
            else:
                where = ["filesystem", "--path", str(self.repo_dir)]
            self._run([*self._kopia(), "repository", "create", *where, *cache])
            # kopia stores uncompressed by default; restic, rustic and Strongroom compress with zstd.
            self._run([*self._kopia(), "policy", "set", "--global", "--compression=zstd"])
        elif self.tool == "borg":
            if self.s3:
                raise ValueError("borg has no S3 backend")
            # repokey-blake2: encrypted like restic/kopia/rustic; borg's default compression lz4 stays.
            self._run([exe, "init", "-e", "repokey-blake2", self._borg_repo()])

    def backup(self, source: Path, tag: str) -> Measured:
        exe = str(self.exe)
        if self.tool == "restic":
            return self._run([exe, *self._restic_repo(), "backup", "-q", "--host", "bench", str(source)])
        if self.tool == "rustic":
            return self._run([exe, *self._rustic_repo(), "backup", "--host", "bench", str(source)])
        if self.tool == "kopia":
            return self._run([*self._kopia(), "snapshot", "create", str(source)])
        if self.tool == "borg":
            return self._run([exe, "create", f"{self._borg_repo()}::{tag}", str(source)])
        raise ValueError(self.tool)

    def check_read_data(self) -> Measured:
        """Read back and verify every stored pack (restic only: ``restic check --read-data``)."""
        if self.tool != "restic":
            raise ValueError(f"{self.tool}: only restic's full read-back check is driven here")
        return self._run([str(self.exe), *self._restic_repo(), "check", "--read-data"])

    def _kopia_root(self, source: Path) -> str:
        out = self._run([*self._kopia(), "snapshot", "list", str(source), "--json"]).stdout
        snaps = json.loads(out[out.index("[") :])
        return snaps[-1]["rootEntry"]["obj"]

    def restore(self, source: Path, tag: str, target: Path, include: str | None = None) -> Measured:
        """Restore the newest snapshot of ``source`` (or only ``include``, relative to it) into ``target``."""
        target.mkdir(parents=True, exist_ok=True)
        exe = str(self.exe)
        if self.tool == "restic":
            extra = ["--include", str(source / include)] if include else []
            return self._run([exe, *self._restic_repo(), "restore", "latest", "--target", str(target), *extra])
        if self.tool == "rustic":
            spec = f"latest:{source / include}" if include else f"latest:{source}"
            dest = target / include if include else target
            dest.parent.mkdir(parents=True, exist_ok=True)
            return self._run([exe, *self._rustic_repo(), "restore", spec, str(dest)])
        if self.tool == "kopia":
            root = self._kopia_root(source)  # a listing, not timed (restic/rustic resolve "latest" inside)
            obj = f"{root}/{include}" if include else root
            dest = target / include if include else target
            dest.parent.mkdir(parents=True, exist_ok=True)
            return self._run([*self._kopia(), "snapshot", "restore", obj, str(dest)])
        if self.tool == "borg":
            rel = str(source / include if include else source).lstrip("/")
            return self._run([exe, "extract", f"{self._borg_repo()}::{tag}", rel], cwd=target)
        raise ValueError(self.tool)

    def restore_removed(
        self, source: Path, tag: str, target: Path, server_cpu: Callable[[], float]
    ) -> tuple[Measured, float]:
        """:meth:`restore` into ``target``, removed afterwards whatever happens; with the CPU seconds
        ``server_cpu`` (the S3 server's counter) grew by during it."""
        before = server_cpu()
        try:
            measured = self.restore(source, tag, target)
            return measured, server_cpu() - before
        finally:
            shutil.rmtree(target, ignore_errors=True)

    def local_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.repo_dir):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    pass
        return total

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="install benchmark peers")
    parser.add_argument("cmd", choices=["install"])
    parser.add_argument("--peers", default="restic,kopia,rustic,borg")
    args = parser.parse_args(argv)
    failed = 0
    for tool in args.peers.split(","):
        try:
            ensure(tool)
            print(f"{tool}: {version_of(tool)}")
        except Exception as exc:  # report and continue with the others
            failed += 1
            print(f"{tool}: NOT AVAILABLE ({exc})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
