"""Session-scoped pytest fixtures for real Kafka, PostgreSQL and S3 servers.

Each server is resolved once per session, in this order:

1. an endpoint from the environment: ``TEST_KAFKA_BOOTSTRAP``; ``TEST_PG_DSN`` (a server DSN whose
   user may create databases and roles); ``TEST_S3_ENDPOINT`` + ``TEST_S3_ACCESS_KEY`` + ``TEST_S3_SECRET_KEY``
   (+ ``TEST_S3_SECURE``);
2. testcontainers, when a Docker engine answers a ping (``STRONGROOM_USE_DOCKER=0`` skips this);
3. the local launchers of :mod:`strongroom_servers` (Kafka from Maven jars, PostgreSQL binaries,
   versitygw built with Go), with downloads and builds cached between runs;
4. otherwise the test is skipped, or fails when ``REQUIRE_SERVICES=1``.

PostgreSQL runs as Strongroom does (ADR 0031): ``pg_dsn`` is the DSN of the migration owner
(``strongroom_owner``: no superuser, CREATEROLE, owns the test's database), and ``pg_logins`` adds
each service's own role on the same database. Only the fixtures use the server's superuser.

A local launcher that is attempted but fails to start always fails the test: a broken launcher must
not hide behind a skip. The servers live in a :class:`ServerPool` stored on the pytest config and
are stopped when pytest unconfigures. ``strongroom_testing.servers_plugin`` registers these fixtures
and prints the servers' versions at session start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.util
import os
import secrets
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from strongroom_platform.db import create_pool
from strongroom_platform.pg_roles import (
    OWNER_ROLE,
    SERVICE_ROLES,
    SchemaSpec,
    ensure_login_role,
    login_dsn,
    migrate_schemas,
    set_role_password,
)
from strongroom_platform.schemas import with_platform
from strongroom_servers import (
    LocalKafka,
    LocalPostgres,
    LocalServer,
    LocalVersityGW,
    PrerequisiteMissing,
    free_port,
    probe_kafka,
    s3_server_header,
)

from strongroom_testing.pki import LocalPki

__all__ = [
    "FIXTURE_KINDS",
    "LocalPki",
    "PgLogins",
    "S3Config",
    "ServerPool",
    "ServiceUnavailable",
    "kafka_bootstrap",
    "local_pki",
    "pg_dsn",
    "pg_logins",
    "pg_server_dsn",
    "s3_config",
    "server_pool",
    "start_or_skip",
]

Kind = Literal["kafka", "postgres", "s3"]
KINDS: tuple[Kind, ...] = ("kafka", "postgres", "s3")
# Which server each fixture needs; the plugin starts only the servers the collected tests use.
FIXTURE_KINDS: dict[str, Kind] = {
    "kafka_bootstrap": "kafka",
    "pg_server_dsn": "postgres",
    "pg_dsn": "postgres",
    "pg_logins": "postgres",
    "s3_config": "s3",
}

# Images for the testcontainers path (overridable for a registry mirror or a newer tag).
KAFKA_IMAGE = os.environ.get("STRONGROOM_KAFKA_IMAGE", "apache/kafka:4.3.1")
POSTGRES_IMAGE = os.environ.get("STRONGROOM_POSTGRES_IMAGE", "postgres:18")
# Single-drive MinIO is erasure-coded ("xl-single") since RELEASE.2022-06-02, so Object Lock works;
# this tag is testcontainers' own default and known to exist.
MINIO_IMAGE = os.environ.get("STRONGROOM_MINIO_IMAGE", "minio/minio:RELEASE.2022-12-02T19-19-22Z")

_T = TypeVar("_T")
_Server = TypeVar("_Server", bound=LocalServer)


@dataclass(frozen=True)
class S3Config:
    """How to reach the session's S3 server (``endpoint`` is ``host:port``, no scheme, as minio takes it)."""

    endpoint: str
    access_key: str
    secret_key: str
    secure: bool
    server_info: str
    # Creates a least-privilege account (access key, secret) governed by bucket policies; only the
    # local versitygw offers one here (MinIO's and AWS's IAM are outside the S3 API).
    create_user: Callable[[str, str], None] | None = None


class ServiceUnavailable(Exception):
    """A server could not be provided. ``hard``: a launch was attempted and broke (always a failure)."""

    def __init__(self, reason: str, *, hard: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hard = hard


@dataclass(frozen=True)
class _Resolved:
    value: Any  # str for kafka/postgres, S3Config for s3
    info: str  # version phrase for the session header


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _run_async(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion on a private event loop in a worker thread.

    Fixtures here are synchronous and may be set up while pytest-asyncio's loop is running in this
    thread, where asyncio.run() is not allowed; a separate thread always works.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, factory()).result()


@functools.lru_cache(maxsize=1)
def _docker_ready() -> bool:
    """True when a Docker engine answers within 3 s (testcontainers is imported only then)."""
    if os.environ.get("STRONGROOM_USE_DOCKER", "").strip() == "0":
        return False
    if importlib.util.find_spec("testcontainers") is None:
        return False  # a Docker SDK without testcontainers: use the local launchers instead
    try:
        import docker  # optional: present with testcontainers

        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except Exception:  # no SDK, no socket, engine down: all mean "no Docker"
        return False
    return True


def _quiet_import(module: str, fallback: str | None = None) -> Any:
    """Import a testcontainers module with its DeprecationWarnings silenced (pytest runs with -W error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module(module)
        except ImportError:
            if fallback is None:
                raise
            return importlib.import_module(fallback)


def _short_pg_version(version: str) -> str:
    # "PostgreSQL 18.6 on x86_64-pc-linux-gnu, compiled by gcc ..., 64-bit" -> drop the compiler part.
    return version.split(", compiled by", 1)[0]


def _kafka_info(bootstrap: str, version: str | None, source: str) -> str:
    """``Kafka 4.3.1 (metadata.version 4.3-IV0 via ApiVersions v3; local)``.

    The broker never sends its software version; the finalized metadata.version from ApiVersions v3
    names its release line (see strongroom_servers.kafka_probe). ``version`` is the exact version
    when we know what we launched (jar version, image tag).
    """
    try:
        probed = probe_kafka(bootstrap)
    except (OSError, ValueError) as exc:
        return f"Kafka {version or '?'} (ApiVersions probe failed: {exc}; {source})"
    if version is None and probed.release_line is None:  # e.g. Tansu: speaks Kafka, finalizes no features
        return f"Kafka-protocol broker ({probed.describe()}; {source})"
    return f"Kafka {version or f'{probed.release_line}.x'} ({probed.describe()}; {source})"


async def _pg_version(dsn: str) -> str:
    import asyncpg  # imported on use: keeps loading the plugin cheap

    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        version: str = await conn.fetchval("SELECT version()")
    finally:
        await conn.close()
    return version


class ServerPool:
    """The servers of one pytest session: resolved lazily, once per kind, stopped by :meth:`close`.

    Thread-safe: :meth:`ensure` starts several kinds in parallel; each kind has its own lock, and a
    failure is remembered so every test needing that server reports the same reason at once.
    """

    def __init__(self) -> None:
        self._locks: dict[Kind, threading.Lock] = {kind: threading.Lock() for kind in KINDS}
        self._outcomes: dict[Kind, _Resolved | ServiceUnavailable] = {}
        self._stack = contextlib.ExitStack()
        self._stack_lock = threading.Lock()

    def get(self, kind: Kind) -> _Resolved:
        """The resolved server of ``kind``; raises ServiceUnavailable (cached) when there is none."""
        with self._locks[kind]:
            outcome = self._outcomes.get(kind)
            if outcome is None:
                try:
                    outcome = self._resolve(kind)
                except ServiceUnavailable as exc:
                    outcome = exc
                except (PrerequisiteMissing, ImportError) as exc:
                    outcome = ServiceUnavailable(f"no local {kind} server: {exc}")
                except Exception as exc:  # a launch was attempted and broke
                    outcome = ServiceUnavailable(f"{kind} failed to start: {exc}", hard=True)
                self._outcomes[kind] = outcome
        if isinstance(outcome, ServiceUnavailable):
            raise outcome
        return outcome

    def ensure(self, kinds: Iterable[Kind]) -> None:
        """Resolve ``kinds`` in parallel (a cold Kafka download and versitygw build overlap)."""
        wanted = [kind for kind in KINDS if kind in set(kinds)]
        if not wanted:
            return
        with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
            for future in [pool.submit(self._get_quietly, kind) for kind in wanted]:
                future.result()

    def version_line(self, kinds: Iterable[Kind]) -> str:
        """``servers: Kafka ... | PostgreSQL ... | S3 ...`` for the given kinds (resolving them if needed)."""
        labels: dict[Kind, str] = {"kafka": "Kafka", "postgres": "PostgreSQL", "s3": "S3"}
        parts = []
        for kind in KINDS:
            if kind not in set(kinds):
                continue
            try:
                parts.append(self.get(kind).info)
            except ServiceUnavailable as exc:
                first_line = exc.reason.splitlines()[0] if exc.reason else "unknown reason"
                parts.append(f"{labels[kind]} unavailable ({first_line[:160]})")
        return "servers: " + " | ".join(parts)

    def close(self) -> None:
        """Stop every server and container this pool started and remove their temp dirs."""
        with self._stack_lock:
            self._stack.close()

    def _get_quietly(self, kind: Kind) -> None:
        with contextlib.suppress(ServiceUnavailable):
            self.get(kind)

    def _push(self, callback: Callable[[], object]) -> None:
        with self._stack_lock:
            self._stack.callback(callback)

    def _tempdir(self, kind: str) -> str:
        path = tempfile.mkdtemp(prefix=f"strongroom-test-{kind}-")
        self._push(functools.partial(shutil.rmtree, path, ignore_errors=True))
        return path

    def _resolve(self, kind: Kind) -> _Resolved:
        if kind == "kafka":
            return self._resolve_kafka()
        if kind == "postgres":
            return self._resolve_postgres()
        return self._resolve_s3()

    # --- Kafka ---------------------------------------------------------------------------------

    def _resolve_kafka(self) -> _Resolved:
        bootstrap = os.environ.get("TEST_KAFKA_BOOTSTRAP", "").strip()
        if bootstrap:
            return _Resolved(bootstrap, _kafka_info(bootstrap, None, "TEST_KAFKA_BOOTSTRAP"))
        if _docker_ready():
            bootstrap = self._docker_kafka()
            tag = KAFKA_IMAGE.rsplit(":", 1)[-1]
            return _Resolved(bootstrap, _kafka_info(bootstrap, tag, f"docker {KAFKA_IMAGE}"))
        kafka = LocalKafka(Path(self._tempdir("kafka")))
        kafka.start()
        self._push(kafka.stop)
        return _Resolved(kafka.bootstrap, _kafka_info(kafka.bootstrap, kafka.version, "local"))

    def _docker_kafka(self) -> str:
        container_mod = _quiet_import("testcontainers.core.container")
        waiting = _quiet_import("testcontainers.core.waiting_utils")
        port = free_port()  # the advertised listener must name the host port, so fix it up front
        container = container_mod.DockerContainer(KAFKA_IMAGE)
        try:
            host = container.get_container_host_ip()
        except Exception:  # docker-in-docker setups need a running container to tell
            host = "127.0.0.1"
        settings = {
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": "PLAINTEXT://0.0.0.0:9092,CONTROLLER://localhost:9093",
            "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{host}:{port}",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
            "KAFKA_NUM_PARTITIONS": "1",
        }
        for key, value in settings.items():
            container = container.with_env(key, value)
        container = container.with_bind_ports(9092, port)
        container.start()
        self._push(container.stop)
        waiting.wait_for_logs(container, "Kafka Server started", timeout=120)
        return f"{host}:{port}"

    # --- PostgreSQL ----------------------------------------------------------------------------

    def _resolve_postgres(self) -> _Resolved:
        dsn = os.environ.get("TEST_PG_DSN", "").strip()
        source = "TEST_PG_DSN"
        if not dsn and _docker_ready():
            module = _quiet_import("testcontainers.community.postgres", "testcontainers.postgres")
            container = module.PostgresContainer(POSTGRES_IMAGE, driver=None)
            container.start()
            self._push(container.stop)
            dsn, source = container.get_connection_url(), f"docker {POSTGRES_IMAGE}"
        if not dsn:
            pg = LocalPostgres(None, Path(self._tempdir("postgres")) / "data")
            pg.start()
            self._push(pg.stop)
            dsn, source = pg.dsn, "local"
        version = _run_async(lambda: _pg_version(dsn))
        return _Resolved(dsn, f"{_short_pg_version(version)} ({source})")

    # --- S3 ------------------------------------------------------------------------------------

    def _resolve_s3(self) -> _Resolved:
        endpoint = os.environ.get("TEST_S3_ENDPOINT", "").strip()
        if endpoint:
            return self._env_s3(endpoint)
        if _docker_ready():
            module = _quiet_import("testcontainers.community.minio", "testcontainers.minio")
            container = module.MinioContainer(MINIO_IMAGE)
            container.start()
            self._push(container.stop)
            conf = container.get_config()
            header = s3_server_header(conf["endpoint"]) or "no Server header"
            info = f"S3 {MINIO_IMAGE} (Server: {header}; docker)"
            return _Resolved(S3Config(conf["endpoint"], conf["access_key"], conf["secret_key"], False, info), info)
        gateway = LocalVersityGW(Path(self._tempdir("s3")))
        gateway.start()
        self._push(gateway.stop)
        header = s3_server_header(gateway.endpoint) or "no Server header"
        info = f"S3 versitygw {gateway.binary_version()} (Server: {header}; local)"
        config = S3Config(
            gateway.endpoint, gateway.access_key, gateway.secret_key, gateway.secure, info, gateway.create_user
        )
        return _Resolved(config, info)

    @staticmethod
    def _env_s3(endpoint: str) -> _Resolved:
        secure_env = os.environ.get("TEST_S3_SECURE")
        secure = _truthy(secure_env)
        if "://" in endpoint:  # accept a URL too; its scheme decides unless TEST_S3_SECURE is set
            parts = urlsplit(endpoint)
            endpoint = parts.netloc
            if secure_env is None:
                secure = parts.scheme == "https"
        access, secret = os.environ.get("TEST_S3_ACCESS_KEY"), os.environ.get("TEST_S3_SECRET_KEY")
        if not access or not secret:
            raise ServiceUnavailable(
                "TEST_S3_ENDPOINT is set but TEST_S3_ACCESS_KEY / TEST_S3_SECRET_KEY are not", hard=True
            )
        header = s3_server_header(endpoint, secure=secure)
        info = f"S3 at {endpoint} (Server: {header or 'none'}; TEST_S3_ENDPOINT)"
        return _Resolved(S3Config(endpoint, access, secret, secure, info), info)


_POOL_KEY = pytest.StashKey[ServerPool]()


def server_pool(config: pytest.Config) -> ServerPool:
    """The session's pool, created on first use and closed when pytest unconfigures."""
    pool = config.stash.get(_POOL_KEY, None)
    if pool is None:
        pool = ServerPool()
        config.stash[_POOL_KEY] = pool
        config.add_cleanup(pool.close)
    return pool


def _require(request: pytest.FixtureRequest, kind: Kind) -> Any:
    try:
        return server_pool(request.config).get(kind).value
    except ServiceUnavailable as exc:
        if exc.hard or os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"{exc.reason} (REQUIRE_SERVICES=1 or a broken launch)", pytrace=False)
        pytest.skip(exc.reason)


def start_or_skip(server: _Server) -> _Server:
    """``server.start()`` for a test that launches its own server: a missing prerequisite (no java,
    no binary) skips the test, or fails it when ``REQUIRE_SERVICES=1``; a broken launch raises.
    Use as ``with start_or_skip(LocalKafka(...)) as kafka:`` to stop it afterwards."""
    try:
        return server.start()
    except PrerequisiteMissing as exc:
        if os.environ.get("REQUIRE_SERVICES") == "1":
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """``host:port`` of a Kafka broker shared by the whole session (topics persist between tests)."""
    value: str = _require(request, "kafka")
    return value


@pytest.fixture(scope="session")
def pg_server_dsn(request: pytest.FixtureRequest) -> str:
    """DSN of a PostgreSQL server whose user may create databases; prefer ``pg_dsn`` in tests."""
    value: str = _require(request, "postgres")
    return value


@dataclass(frozen=True)
class _PgCluster:
    """The session's roles: the migration owner and every service role, with their passwords."""

    server_dsn: str
    owner_password: str
    role_password: str


@dataclass(frozen=True)
class PgLogins:
    """The logins of one test database: the migration owner and each service's own role."""

    owner: str
    role_password: str

    def service(self, name: str) -> str:
        """DSN of service ``name``'s role (``catalog``, ``gateway``, ...) on the test's database."""
        return login_dsn(self.owner, SERVICE_ROLES[name], self.role_password)

    def env(self, name: str) -> dict[str, str]:
        """A service process's database settings: its own role, and the owner to migrate with."""
        return {"STRONGROOM_PG_DSN": self.service(name), "STRONGROOM_PG_MIGRATE_DSN": self.owner}

    async def pool(self, spec: SchemaSpec, *, max_size: int = 10) -> asyncpg.Pool:
        """A pool as the role of the service ``spec`` belongs to, after the owner migrated it (and the
        platform's schemas), as the service itself would at start."""
        await migrate_schemas(self.owner, with_platform(spec))
        return await create_pool(self.service(spec.schema), spec.schema, max_size=max_size)


@pytest.fixture(scope="session")
def _pg_cluster(pg_server_dsn: str) -> _PgCluster:
    """Create (or update) the owner role as the server's superuser, then the service roles as the owner."""
    cluster = _PgCluster(pg_server_dsn, secrets.token_hex(16), secrets.token_hex(16))

    async def setup() -> None:
        import asyncpg

        conn = await asyncpg.connect(pg_server_dsn, timeout=30)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", OWNER_ROLE):
                await conn.execute(f'CREATE ROLE "{OWNER_ROLE}" LOGIN CREATEROLE NOSUPERUSER')
            await conn.execute(f'ALTER ROLE "{OWNER_ROLE}" LOGIN CREATEROLE NOSUPERUSER NOCREATEDB NOBYPASSRLS')
            await set_role_password(conn, OWNER_ROLE, cluster.owner_password)
        finally:
            await conn.close()
        owner = await asyncpg.connect(login_dsn(pg_server_dsn, OWNER_ROLE, cluster.owner_password), timeout=30)
        try:
            for role in SERVICE_ROLES.values():
                await ensure_login_role(owner, role)
                await set_role_password(owner, role, cluster.role_password)
        finally:
            await owner.close()

    _run_async(setup)
    return cluster


@pytest.fixture
def pg_dsn(_pg_cluster: _PgCluster) -> Iterator[str]:
    """DSN of the migration owner (no superuser) on a fresh, uniquely named, empty database it owns;
    the database is dropped (with FORCE) after the test."""
    server_dsn = _pg_cluster.server_dsn
    name = f"t_{uuid.uuid4().hex[:16]}"

    async def create() -> None:
        import asyncpg

        conn = await asyncpg.connect(server_dsn, timeout=30)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" OWNER "{OWNER_ROLE}"')
        finally:
            await conn.close()

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(server_dsn, timeout=30)
        try:
            # FORCE (PostgreSQL 13+) terminates connections a test left open.
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run_async(create)
    parts = urlsplit(login_dsn(server_dsn, OWNER_ROLE, _pg_cluster.owner_password))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        _run_async(drop)


@pytest.fixture
def pg_logins(pg_dsn: str, _pg_cluster: _PgCluster) -> PgLogins:
    """The test database's logins: ``owner`` (= ``pg_dsn``) and ``service(name)`` per service role."""
    return PgLogins(owner=pg_dsn, role_password=_pg_cluster.role_password)


@pytest.fixture(scope="session")
def s3_config(request: pytest.FixtureRequest) -> S3Config:
    """The session's S3 server; it supports versioning and Object Lock (``make_bucket(..., object_lock=True)``)."""
    value: S3Config = _require(request, "s3")
    return value


@pytest.fixture
def local_pki(tmp_path: Path) -> LocalPki:
    """A test CA with a certificate for every service (``strongroom_testing.pki``)."""
    return LocalPki.create(tmp_path / "pki")
