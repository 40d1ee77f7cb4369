"""The ObjectStore contract run against the in-memory fake, the filesystem adapter and a real S3 server."""

from __future__ import annotations

import os
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
