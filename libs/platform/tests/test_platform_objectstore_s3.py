"""S3 adapter details on the real S3 server: bucket setup, checksums, versions, dates, the factory."""

from __future__ import annotations

import base64
import datetime as dt
import io
import uuid
import zlib
from pathlib import Path
from xml.etree import ElementTree

import pytest
from minio import Minio
from minio.commonconfig import COMPLIANCE
from minio.retention import Retention
from strongroom_platform.clock import SystemClock
from strongroom_platform.objectstore import ObjectLocked, ObjectStoreError
from strongroom_platform.objectstore_factory import open_object_store
from strongroom_platform.objectstore_fs import FilesystemObjectStore
from strongroom_platform.objectstore_s3 import S3ObjectStore, _parse_s3_time
from strongroom_platform.settings import PlatformSettings, S3Settings, SettingsError
from strongroom_platform.testing import FakeClock
from strongroom_testing.fixtures import S3Config
from test_platform_objectstore_contract import s3_client


def _bucket() -> str:
    return f"adapter-{uuid.uuid4().hex[:16]}"


def _versions(client: Minio, bucket: str, key: str) -> list[str]:
    """Kinds ("Version" / "DeleteMarker") of every stored version of ``key``, straight from ListObjectVersions."""
    response = client._execute("GET", bucket, query_params={"versions": "", "prefix": key})
    root = ElementTree.fromstring(response.data)
    kinds = []
    for element in root:
        kind = element.tag.rsplit("}", 1)[-1]
        if kind in {"Version", "DeleteMarker"}:
            kinds.append(kind)
    return kinds


def test_retention_dates_parse_in_every_server_format() -> None:
    expected = dt.datetime(2026, 11, 24, 18, 38, 14, tzinfo=dt.UTC)
    assert _parse_s3_time("2026-11-24T18:38:14Z") == expected
    assert _parse_s3_time("2026-11-24T18:38:14.000Z") == expected
    assert _parse_s3_time("2026-11-24T18:38:14.000000000Z") == expected
    assert _parse_s3_time("2026-11-24T18:38:14.947829345Z") == expected.replace(microsecond=947829)


def _settings(object_store: str, s3: S3Settings | None = None) -> PlatformSettings:
    return PlatformSettings(
        pg_dsn="postgresql://unused", kafka_bootstrap="unused:9092", kafka_idempotent=True,
        object_store=object_store, s3=s3, otel="none",
    )  # fmt: skip


async def test_factory_opens_a_filesystem_store(tmp_path: Path) -> None:
    clock = FakeClock()
    store = await open_object_store(_settings(f"file:{tmp_path / 'objects'}"), clock)
    assert isinstance(store, FilesystemObjectStore)
    await store.put("k", b"v")
    assert (tmp_path / "objects" / "k.obj").read_bytes() == b"v"


@pytest.mark.parametrize("value", ["file:", "gcs", "s3"])
async def test_factory_rejects_bad_settings(value: str) -> None:
    with pytest.raises(SettingsError):
        await open_object_store(_settings(value), FakeClock())  # "s3" here lacks its S3 settings


@pytest.mark.integration
class TestOnServer:
    async def test_factory_opens_s3_and_creates_the_lock_bucket(self, s3_config: S3Config) -> None:
        bucket = _bucket()
        s3 = S3Settings(s3_config.endpoint, s3_config.access_key, s3_config.secret_key, s3_config.secure, bucket,
                        "us-east-1")  # fmt: skip
        store = await open_object_store(_settings("s3", s3), SystemClock())
        assert isinstance(store, S3ObjectStore)
        until = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=5)
        await store.put("k", b"v", retain_until=until)
        assert (await store.stat("k")).retain_until == until

    async def test_a_pack_sized_object_is_one_put_request(self, s3_config: S3Config) -> None:
        client = s3_client(s3_config)
        store = S3ObjectStore(client, _bucket())
        await store.ensure_bucket()
        requests: list[tuple[str, str]] = []
        urlopen = client._http.urlopen

        def recording(method: str, url: str, *args: object, **kwargs: object) -> object:
            requests.append((method, url.split("?", 1)[1] if "?" in url else ""))
            return urlopen(method, url, *args, **kwargs)

        client._http.urlopen = recording  # type: ignore[method-assign]
        data = bytes(range(256)) * (17 << 12)  # 17 MiB: minio's own default would upload 4 parts
        await store.put("pack", data)
        puts = [r for r in requests if r[0] in {"PUT", "POST"}]
        assert puts == [("PUT", "")]
        assert await store.get("pack") == data

    async def test_gets_reuse_pooled_connections(self, s3_config: S3Config) -> None:
        client = s3_client(s3_config)
        store = S3ObjectStore(client, _bucket(), max_concurrency=1)
        await store.ensure_bucket()
        await store.put("k", b"0123456789")
        pool = client._http.connection_from_url(client._base_url._url.geturl())
        before = pool.num_connections
        for offset in range(8):
            assert await store.get("k", offset=offset, length=2) == b"0123456789"[offset : offset + 2]
        assert pool.num_connections - before <= 1  # one connection at most, not one per GET

    async def test_ensure_bucket_is_idempotent(self, s3_config: S3Config) -> None:
        store = S3ObjectStore(s3_client(s3_config), _bucket())
        await store.ensure_bucket()
        await store.ensure_bucket()
        await store.put("k", b"v")
        assert await store.get("k") == b"v"

    async def test_ensure_bucket_refuses_a_bucket_without_object_lock(self, s3_config: S3Config) -> None:
        client, bucket = s3_client(s3_config), _bucket()
        client.make_bucket(bucket)
        with pytest.raises(ObjectStoreError, match="without Object Lock"):
            await S3ObjectStore(client, bucket).ensure_bucket()

    async def test_put_sends_a_crc32_the_server_verified(self, s3_config: S3Config) -> None:
        client, bucket = s3_client(s3_config), _bucket()
        store = S3ObjectStore(client, bucket)
        await store.ensure_bucket()
        data = b"checksummed bytes" * 1000
        await store.put("c/k", data, retain_until=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
        head = client.stat_object(bucket, "c/k", extra_headers={"x-amz-checksum-mode": "ENABLED"})
        expected = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
        assert head.metadata is not None
        assert head.metadata.get("x-amz-checksum-crc32") == expected

    async def test_delete_removes_versions_and_markers_left_by_other_clients(self, s3_config: S3Config) -> None:
        client, bucket = s3_client(s3_config), _bucket()
        store = S3ObjectStore(client, bucket)
        await store.ensure_bucket()
        await store.put("v/k", b"one")
        await store.put("v/k", b"two")
        client.remove_object(bucket, "v/k")  # a plain DELETE: only a delete marker on a versioned bucket
        assert sorted(_versions(client, bucket, "v/k")) == ["DeleteMarker", "Version", "Version"]
        await store.delete("v/k")
        assert _versions(client, bucket, "v/k") == []

    async def test_a_locked_older_version_blocks_delete_and_nothing_is_removed(self, s3_config: S3Config) -> None:
        client, bucket = s3_client(s3_config), _bucket()
        store = S3ObjectStore(client, bucket)
        await store.ensure_bucket()
        await store.put("v/locked", b"old", retain_until=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
        # Another client stacks an unlocked version on top (S3 allows it; our put refuses).
        client.put_object(bucket, "v/locked", io.BytesIO(b"new"), 3)
        with pytest.raises(ObjectLocked):
            await store.delete("v/locked")
        assert _versions(client, bucket, "v/locked") == ["Version", "Version"]
        assert await store.get("v/locked") == b"new"

    async def test_fractional_retention_is_rounded_up_never_down(self, s3_config: S3Config) -> None:
        client, bucket = s3_client(s3_config), _bucket()
        store = S3ObjectStore(client, bucket)
        await store.ensure_bucket()
        until = dt.datetime.now(dt.UTC).replace(microsecond=250_000) + dt.timedelta(minutes=5)
        await store.put("r/k", b"x", retain_until=until)
        stored = (await store.stat("r/k")).retain_until
        assert stored == until.replace(microsecond=0) + dt.timedelta(seconds=1)

    async def test_extend_retention_acts_on_the_current_version(self, s3_config: S3Config) -> None:
        client, bucket = s3_client(s3_config), _bucket()
        store = S3ObjectStore(client, bucket)
        await store.ensure_bucket()
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        await store.put("x/k", b"x", retain_until=now + dt.timedelta(minutes=5))
        await store.extend_retention("x/k", now + dt.timedelta(minutes=10))
        # Shortening directly is refused by the server too: COMPLIANCE is binding.
        version = client.stat_object(bucket, "x/k").version_id
        with pytest.raises(Exception, match="AccessDenied"):
            client.set_object_retention(bucket, "x/k", Retention(COMPLIANCE, now + dt.timedelta(minutes=1)),
                                        version_id=version)  # fmt: skip
        assert (await store.stat("x/k")).retain_until == now + dt.timedelta(minutes=10)
