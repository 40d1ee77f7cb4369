"""The ObjectStore contract run against the in-memory fake, the filesystem adapter and a real S3 server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from minio import Minio
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.objectstore import ObjectStore
from strongroom_platform.objectstore_fs import FilesystemObjectStore
from strongroom_platform.objectstore_s3 import S3ObjectStore
from strongroom_platform.testing import FakeClock, InMemoryObjectStore
from strongroom_testing.contracts import ObjectStoreContract
from strongroom_testing.fixtures import S3Config


class TestInMemoryObjectStore(ObjectStoreContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def store(self, clock: FakeClock) -> ObjectStore:
        return InMemoryObjectStore(clock)


class TestFilesystemObjectStore(ObjectStoreContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def store(self, clock: FakeClock, tmp_path: Path) -> ObjectStore:
        return FilesystemObjectStore(tmp_path / "objects", clock)


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
