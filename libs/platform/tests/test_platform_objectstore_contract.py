"""The ObjectStore contract run against the in-memory fake, the filesystem adapter and a real S3 server."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import urllib3
from minio import Minio
from strongroom_platform.certs import CertificateAuthority, ensure_local_pki, write_ca
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.objectstore import ObjectStore
from strongroom_platform.objectstore_factory import open_object_store
from strongroom_platform.objectstore_fs import FilesystemObjectStore
from strongroom_platform.objectstore_s3 import S3ObjectStore
from strongroom_platform.settings import PlatformSettings, S3Settings, SettingsError
from strongroom_platform.testing import FakeClock, InMemoryObjectStore
from strongroom_servers import LocalVersityGW, S3ServerTls
from strongroom_testing.contracts import Attacker, InMemoryAttacker, ObjectStoreContract, S3Attacker
from strongroom_testing.fixtures import S3Config


class TestInMemoryObjectStore(ObjectStoreContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def store(self, clock: FakeClock) -> ObjectStore:
        return InMemoryObjectStore(clock)

    @pytest.fixture
    def attacker(self, store: InMemoryObjectStore) -> Attacker:
        return InMemoryAttacker(store)


class FilesystemAttacker:
    """Someone with write access to the store's directory: replaces or removes the current file."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _current(self, key: str) -> Path:
        *dirs, name = key.split("/")
        return self._root.joinpath(*(d + ".d" for d in dirs)) / (name + ".obj")

    async def delete_marker(self, key: str) -> None:
        self._current(key).unlink()

    async def overwrite(self, key: str, data: bytes) -> None:
        target = self._current(key)
        forged = target.with_name("forged.tmp")
        forged.write_bytes(data)
        os.replace(forged, target)


class TestFilesystemObjectStore(ObjectStoreContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def store(self, clock: FakeClock, tmp_path: Path) -> ObjectStore:
        return FilesystemObjectStore(tmp_path / "objects", clock)

    @pytest.fixture
    def attacker(self, tmp_path: Path) -> Attacker:
        return FilesystemAttacker(tmp_path / "objects")


def s3_client(config: S3Config) -> Minio:
    return Minio(
        config.endpoint,
        access_key=config.access_key,
        secret_key=config.secret_key,
        secure=config.secure,
        region="us-east-1",
    )


@pytest.mark.integration
class TestS3ObjectStore(ObjectStoreContract):
    @pytest.fixture
    def clock(self) -> Clock:
        return SystemClock()  # the server enforces locks on its own (real) time

    @pytest.fixture
    async def store(self, s3_config: S3Config, clock: Clock) -> AsyncIterator[ObjectStore]:
        store = S3ObjectStore(s3_client(s3_config), f"contract-{uuid.uuid4().hex[:16]}", clock=clock)
        await store.ensure_bucket()
        yield store

    @pytest.fixture
    def attacker(self, store: S3ObjectStore, s3_config: S3Config) -> Attacker:
        return S3Attacker(s3_client(s3_config), store.bucket)


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalVersityGW]:
    """A versitygw of its own that speaks HTTPS only, with a certificate for 127.0.0.1 from a test CA."""
    pki = tmp_path_factory.mktemp("s3-pki")
    cert, key = ensure_local_pki(pki, ["s3"])["s3"]
    gateway = LocalVersityGW(tmp_path_factory.mktemp("s3-tls"), tls=S3ServerTls(cert, key, pki / "ca.pem"))
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """The bundle of a CA that did not issue the gateway's certificate."""
    write_ca(tmp_path / "other", CertificateAuthority.create())
    return tmp_path / "other" / "ca.pem"


def tls_settings(gateway: LocalVersityGW, ca_file: Path | None, *, secure: bool = True) -> S3Settings:
    bucket = f"tls-{uuid.uuid4().hex[:16]}"
    return S3Settings(
        gateway.endpoint, gateway.access_key, gateway.secret_key, secure, bucket, "us-east-1", ca_file=ca_file
    )


@pytest.mark.integration
class TestS3ObjectStoreOverTls(ObjectStoreContract):
    """The whole contract through the production constructor, over HTTPS verified against the CA."""

    @pytest.fixture
    def clock(self) -> Clock:
        return SystemClock()

    @pytest.fixture
    async def store(self, tls_gateway: LocalVersityGW, clock: Clock) -> AsyncIterator[ObjectStore]:
        assert tls_gateway.tls is not None
        store = S3ObjectStore.from_settings(tls_settings(tls_gateway, tls_gateway.tls.ca_file), clock=clock)
        await store.ensure_bucket()
        yield store

    @pytest.fixture
    def attacker(self, store: S3ObjectStore, tls_gateway: LocalVersityGW) -> Attacker:
        assert tls_gateway.tls is not None
        http = urllib3.PoolManager(ca_certs=str(tls_gateway.tls.ca_file))
        client = Minio(
            tls_gateway.endpoint,
            access_key=tls_gateway.access_key,
            secret_key=tls_gateway.secret_key,
            secure=True,
            region="us-east-1",
            http_client=http,
        )
        return S3Attacker(client, store.bucket)


@pytest.mark.integration
async def test_an_s3_server_whose_certificate_another_ca_issued_is_refused(
    tls_gateway: LocalVersityGW, other_ca: Path
) -> None:
    """A man in the middle with a certificate from another CA gets no request, credentials included."""
    store = S3ObjectStore.from_settings(tls_settings(tls_gateway, other_ca))
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="CERTIFICATE_VERIFY_FAILED"):
        await store.ensure_bucket()


@pytest.mark.integration
async def test_the_system_roots_do_not_trust_a_private_ca(tls_gateway: LocalVersityGW) -> None:
    """Without ``STRONGROOM_S3_TLS_CA`` the endpoint is verified against the system roots, not skipped."""
    store = S3ObjectStore.from_settings(tls_settings(tls_gateway, None))
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="CERTIFICATE_VERIFY_FAILED"):
        await store.ensure_bucket()


@pytest.mark.integration
async def test_plain_http_to_a_tls_only_s3_server_is_answered_with_an_error(tls_gateway: LocalVersityGW) -> None:
    """A client left on plain HTTP gets an error, not service: the server speaks TLS only."""
    store = S3ObjectStore.from_settings(tls_settings(tls_gateway, None, secure=False))
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="Connection aborted"):
        await store.ensure_bucket()


@pytest.mark.integration
async def test_a_service_on_an_untrusted_s3_certificate_stops_with_a_clear_setting_error(
    tls_gateway: LocalVersityGW, other_ca: Path
) -> None:
    """At start-up the wrong CA is a SettingsError naming the endpoint and the setting, not a traceback."""
    env = {
        "STRONGROOM_PG_DSN": "postgresql://x",
        "STRONGROOM_KAFKA_BOOTSTRAP": "k:9092",
        "STRONGROOM_INSECURE_PLAINTEXT": "1",
        "STRONGROOM_OBJECT_STORE": "s3",
        "STRONGROOM_S3_ENDPOINT": tls_gateway.endpoint,
        "STRONGROOM_S3_ACCESS_KEY": tls_gateway.access_key,
        "STRONGROOM_S3_SECRET_KEY": tls_gateway.secret_key,
        "STRONGROOM_S3_BUCKET": f"tls-{uuid.uuid4().hex[:16]}",
        "STRONGROOM_S3_TLS_CA": str(other_ca),
    }
    settings = PlatformSettings.from_env(env)
    with pytest.raises(SettingsError, match=r"presented a certificate that .* does not verify.*STRONGROOM_S3_TLS_CA"):
        await open_object_store(settings, SystemClock())
