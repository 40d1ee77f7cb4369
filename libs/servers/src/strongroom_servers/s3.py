"""versitygw: an Apache-2.0 S3 gateway with versioning and Object Lock, built from source with ``go install``.

The binary is built once into ``<cache>/versitygw-<version>/bin`` (a ``.complete`` marker is
written last) and run with the posix backend over a work dir, plus ``--versioning-dir`` so buckets
created with Object Lock get versioning, retention and legal hold.
"""

from __future__ import annotations

import errno
import http.client
import os
import secrets
import signal
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from strongroom_servers._process import LocalServer, ManagedProcess, ServerStartError
from strongroom_servers.gotools import GoTool, ensure_go_binary

__all__ = [
    "VERSITYGW_MODULE",
    "VERSITYGW_VERSION",
    "LocalVersityGW",
    "S3ServerTls",
    "ensure_versitygw",
    "s3_server_header",
]

VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"
# v1.8.0 rather than v1.7.0: v1.7.0 lets a client *shorten* a COMPLIANCE retention period
# (AWS refuses that), v1.8.0 refuses it. Both build with Go 1.26 and CGO_ENABLED=0.
VERSITYGW_VERSION = "v1.8.0"


def ensure_versitygw(version: str = VERSITYGW_VERSION) -> Path:
    """Path of a versitygw binary for ``version``, building it with ``go install`` if needed.

    ``$STRONGROOM_VERSITYGW_BIN`` names a prebuilt binary and skips the build. Raises
    PrerequisiteMissing when ``go`` is needed but absent, ServerStartError when the build fails.
    """
    # go install leaves main.Version at "git"; stamp the real tag so `versitygw --version` tells it.
    ldflags = f"-X main.Version={version} -X main.Build=go-install"
    return ensure_go_binary(GoTool("versitygw", VERSITYGW_MODULE, version, "STRONGROOM_VERSITYGW_BIN", ldflags))


@dataclass(frozen=True)
class S3ServerTls:
    """The certificate the S3 server presents (``cert_file``, ``key_file``; PEM) and the CA that issued it."""

    cert_file: Path
    key_file: Path
    ca_file: Path


def s3_server_header(
    endpoint: str, *, secure: bool = False, ca_file: Path | None = None, timeout: float = 5.0
) -> str | None:
    """The ``Server`` header of an unauthenticated ``GET /`` (an S3 server answers 403 with it), or None.

    With ``secure``, over TLS, verifying the server against ``ca_file`` (else the system roots).
    """
    conn: http.client.HTTPConnection
    if secure:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
        conn = http.client.HTTPSConnection(endpoint, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(endpoint, timeout=timeout)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.getheader("Server")
    except OSError:
        return None
    finally:
        conn.close()


def _answers_http(endpoint: str, tls: S3ServerTls | None = None) -> bool:
    ca_file = tls.ca_file if tls is not None else None
    return s3_server_header(endpoint, secure=tls is not None, ca_file=ca_file, timeout=1.0) is not None


def _xattrs_supported(directory: Path) -> bool:
    try:
        os.setxattr(directory, "user.strongroom.probe", b"1")
        os.removexattr(directory, "user.strongroom.probe")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    return True


class LocalVersityGW(LocalServer):
    """versitygw on ``127.0.0.1:<port>``, posix backend over ``work_dir/root``, versioning in ``work_dir/versions``.

    Contract: ``start()`` builds the binary if needed (cached), launches the gateway and returns once
    it answers HTTP with its Server header; raises ServerStartError with the log tail otherwise.
    Object metadata lives in ``user.*`` xattrs; on a filesystem without them a sidecar dir
    (``work_dir/meta``) is used. One root account, ``access_key`` / ``secret_key`` (a random secret
    unless given). With ``tls`` it serves HTTPS only, presenting ``tls.cert_file``. ``keep_alive``
    (default on) keeps client connections open between requests, as AWS S3 and MinIO do; versitygw's
    own default answers every request with ``Connection: close``, so each request paid a new TCP
    connection and, over TLS, a full handshake on both sides (ADR 0070). ``stop()``:
    SIGTERM, SIGKILL after ``stop_timeout``. Log: ``work_dir/versitygw.log``. The gateway does not
    outlive the process that started it (ADR 0022).
    """

    _bind_errors = ("address already in use",)
    _ready_what = "HTTP answer on port {port}"

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int | None = None,
        access_key: str = "strongroom",
        secret_key: str | None = None,
        version: str = VERSITYGW_VERSION,
        binary: Path | None = None,
        tls: S3ServerTls | None = None,
        keep_alive: bool = True,
        start_timeout: float = 30.0,
        stop_timeout: float = 15.0,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.work_dir = Path(work_dir).absolute()
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.version = version
        self._binary = binary
        self.tls = tls
        self.keep_alive = keep_alive
        self._backend: list[str] = []

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` (no scheme; HTTPS when :attr:`secure`), as the minio SDK takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def secure(self) -> bool:
        return self.tls is not None

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "versitygw.log"

    def binary(self) -> Path:
        if self._binary is None:
            self._binary = ensure_versitygw(self.version)
        return self._binary

    def binary_version(self) -> str:
        """The version the binary reports (``versitygw --version``), e.g. ``"v1.8.0"``."""
        out = subprocess.run([str(self.binary()), "--version"], capture_output=True, text=True, timeout=30)
        for line in out.stdout.splitlines():
            if line.startswith("Version"):
                return line.split(":", 1)[1].strip()
        return "unknown"

    def server_info(self) -> str:
        """``"versitygw v1.8.0 (Server: VERSITYGW)"``: the binary's own version plus the HTTP Server header."""
        ca_file = self.tls.ca_file if self.tls is not None else None
        header = (
            s3_server_header(self.endpoint, secure=self.secure, ca_file=ca_file) if self._proc is not None else None
        )
        return f"versitygw {self.binary_version()}" + (f" (Server: {header})" if header else "")

    def create_user(self, access_key: str, secret_key: str, *, role: str = "user") -> None:
        """Create an IAM account on the running gateway (``versitygw admin create-user``).

        A ``user`` may do only what a bucket policy grants it (a bucket without a policy falls back to
        ACLs: its owner's). Raises ServerStartError with the tool's answer when the gateway refuses.
        """
        env = dict(os.environ)
        # The admin credentials through the environment, so they do not show in `ps`.
        env.update(ADMIN_ACCESS_KEY_ID=self.access_key, ADMIN_SECRET_ACCESS_KEY=self.secret_key)
        if self.tls is not None:
            env["SSL_CERT_FILE"] = str(self.tls.ca_file)  # Go's roots on Linux: the tool verifies the gateway
        command = [str(self.binary()), "admin", "--endpoint-url", self.url, "create-user"]
        command += ["--access", access_key, "--secret", secret_key, "--role", role]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
        if result.returncode != 0:
            answer = (result.stderr or result.stdout).strip()
            raise ServerStartError(f"versitygw refused to create user {access_key!r}: {answer}")

    def _prepare(self) -> None:
        self.binary()
        root, versions = self.work_dir / "root", self.work_dir / "versions"
        for directory in (root, versions, self.work_dir / "iam"):
            directory.mkdir(parents=True, exist_ok=True)
        self._backend = ["posix", "--versioning-dir", str(versions)]
        if not _xattrs_supported(root):
            meta = self.work_dir / "meta"
            meta.mkdir(exist_ok=True)
            self._backend += ["--sidecar", str(meta)]

    def _launch(self, port: int) -> ManagedProcess:
        env = dict(os.environ)
        # Credentials through the environment, so they do not show in `ps`.
        env.update(ROOT_ACCESS_KEY=self.access_key, ROOT_SECRET_KEY=self.secret_key)
        tls = [] if self.tls is None else ["--cert", str(self.tls.cert_file), "--key", str(self.tls.key_file)]
        keep_alive = ["--keep-alive"] if self.keep_alive else []
        return ManagedProcess(
            "versitygw",
            [
                str(self.binary()),
                "--port",
                f"127.0.0.1:{port}",
                "--quiet",
                *keep_alive,
                *tls,
                # Internal IAM (accounts in a file under work_dir/iam): least-privilege identities
                # can be created with create_user() and governed by a bucket policy (ADR 0035).
                "--iam-dir",
                str(self.work_dir / "iam"),
                *self._backend,
                str(self.work_dir / "root"),
            ],
            self.log_path,
            env=env,
            cwd=self.work_dir,
            stop_signal=signal.SIGTERM,
            stop_timeout=self.stop_timeout,
        )

    def _ready(self, proc: ManagedProcess, port: int) -> bool:
        return _answers_http(f"127.0.0.1:{port}", self.tls)
