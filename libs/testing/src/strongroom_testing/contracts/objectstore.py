"""Contract suite of the :class:`~strongroom_platform.objectstore.ObjectStore` port.

Subclass :class:`ObjectStoreContract` and provide three fixtures:

- ``store``: an empty store (a fresh bucket or directory per test);
- ``clock``: the clock that decides when the store's locks expire. With a
  :class:`~strongroom_platform.testing.FakeClock` the suite advances it; with
  any other clock (a real server) it sleeps in real time, briefly.
- ``attacker``: an :class:`Attacker` acting on the same storage directly, with the
  storage's own credentials, bypassing the adapter's checks.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import zlib
from typing import Protocol

import pytest
from minio import Minio
from strongroom_platform.clock import Clock
from strongroom_platform.objectstore import ObjectLocked, ObjectNotFound, ObjectStore
from strongroom_platform.testing import FakeClock, InMemoryObjectStore

__all__ = ["Attacker", "InMemoryAttacker", "ObjectStoreContract", "S3Attacker"]


class Attacker(Protocol):
    """What anyone holding the storage credentials can do without the adapter (security.md §b 25)."""

    async def delete_marker(self, key: str) -> None:
        """A plain DELETE without version id: the key reads as missing, no version's bytes are removed."""
        ...

    async def overwrite(self, key: str, data: bytes) -> None:
        """A PUT over the key, locked or not: a new current version on top of the others."""
        ...


class InMemoryAttacker:
    """The :class:`Attacker` of an :class:`~strongroom_platform.testing.InMemoryObjectStore`."""

    def __init__(self, store: InMemoryObjectStore) -> None:
        self._store = store

    async def delete_marker(self, key: str) -> None:
        self._store.add_delete_marker(key)

    async def overwrite(self, key: str, data: bytes) -> None:
        self._store.put_new_version(key, data)


class S3Attacker:
    """The :class:`Attacker` of an S3 bucket: a plain client with the services' credentials, no adapter checks."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self._client, self._bucket = client, bucket

    async def delete_marker(self, key: str) -> None:
        await asyncio.to_thread(self._client.remove_object, self._bucket, key)

    async def overwrite(self, key: str, data: bytes) -> None:
        # An Object Lock bucket wants a checksum on every PUT (see objectstore_s3).
        crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
        headers = {"x-amz-sdk-checksum-algorithm": "CRC32", "x-amz-checksum-crc32": crc}
        await asyncio.to_thread(
            self._client.put_object,
            self._bucket,
            key,
            io.BytesIO(data),
            len(data),
            metadata=headers,  # type: ignore[arg-type]  # minio's DictType is too narrow
        )


def _whole_seconds_from(clock: Clock, seconds: int) -> dt.datetime:
    """A retention date ``seconds`` from now, on a whole second (S3 keeps second precision)."""
    return clock.now().replace(microsecond=0) + dt.timedelta(seconds=seconds + 1)


async def _let_time_pass(clock: Clock, until: dt.datetime) -> None:
    """Move past ``until`` on the store's clock (advance a fake, sleep on a real one)."""
    if isinstance(clock, FakeClock):
        clock.set(until + dt.timedelta(seconds=1))
        return
    remaining = (until - clock.now()).total_seconds()
    await asyncio.sleep(max(remaining, 0.0) + 1.2)


async def _keys(store: ObjectStore, prefix: str) -> list[str]:
    return [key async for key in store.list(prefix)]


class ObjectStoreContract:
    """Behaviour every ObjectStore adapter must have."""

    @pytest.fixture
    def store(self) -> ObjectStore:
        raise NotImplementedError("a contract subclass provides the store fixture")

    @pytest.fixture
    def clock(self) -> Clock:
        raise NotImplementedError("a contract subclass provides the clock fixture")

    # -- reading and writing ------------------------------------------------

    async def test_read_after_write_returns_exact_bytes(self, store: ObjectStore) -> None:
        payloads = {
            "packs/empty": b"",
            "packs/small": b"hello",
            "packs/binary": bytes(range(256)) * 4,
            "packs/large": bytes((i * 7) % 251 for i in range(3 * 1024 * 1024 + 17)),
        }
        for key, data in payloads.items():
            await store.put(key, data)
        for key, data in payloads.items():
            assert await store.get(key) == data, key

    async def test_put_replaces_an_unlocked_object(self, store: ObjectStore) -> None:
        await store.put("manifests/m1", b"first version")
        await store.put("manifests/m1", b"second")
        assert await store.get("manifests/m1") == b"second"
        assert (await store.stat("manifests/m1")).size == len(b"second")

    async def test_range_reads(self, store: ObjectStore) -> None:
        data = b"0123456789abcdef"
        await store.put("r/obj", data)
        assert await store.get("r/obj", offset=0, length=4) == b"0123"
        assert await store.get("r/obj", offset=10, length=3) == b"abc"
        assert await store.get("r/obj", offset=12) == b"cdef"
        assert await store.get("r/obj", offset=14, length=100) == b"ef"  # clipped at the end
        assert await store.get("r/obj", offset=16) == b""
        assert await store.get("r/obj", offset=3, length=0) == b""

    async def test_negative_range_is_rejected(self, store: ObjectStore) -> None:
        await store.put("r/neg", b"abc")
        with pytest.raises(ValueError):
            await store.get("r/neg", offset=-1)
        with pytest.raises(ValueError):
            await store.get("r/neg", offset=0, length=-2)

    async def test_stat_reports_size_and_no_retention(self, store: ObjectStore) -> None:
        await store.put("s/plain", b"x" * 1234)
        info = await store.stat("s/plain")
        assert (info.key, info.size, info.retain_until) == ("s/plain", 1234, None)

    async def test_stat_reports_retention(self, store: ObjectStore, clock: Clock) -> None:
        until = _whole_seconds_from(clock, 600)
        await store.put("s/locked", b"abc", retain_until=until)
        info = await store.stat("s/locked")
        assert info.size == 3
        assert info.retain_until == until

    async def test_missing_key_is_not_found(self, store: ObjectStore, clock: Clock) -> None:
        with pytest.raises(ObjectNotFound):
            await store.get("nope/missing")
        with pytest.raises(ObjectNotFound):
            await store.get("nope/missing", offset=1, length=2)
        with pytest.raises(ObjectNotFound):
            await store.stat("nope/missing")
        with pytest.raises(ObjectNotFound):
            await store.extend_retention("nope/missing", _whole_seconds_from(clock, 60))
        await store.delete("nope/missing")  # deleting a missing key is not an error

    # -- versions -----------------------------------------------------------

    async def test_put_returns_a_version_id_that_reads_that_version(self, store: ObjectStore) -> None:
        v1 = await store.put("v/obj", b"first")
        v2 = await store.put("v/obj", b"second!")
        assert v1 and v2 and v1 != v2
        assert await store.get("v/obj") == b"second!"
        assert await store.get("v/obj", version_id=v1) == b"first"
        assert await store.get("v/obj", version_id=v1, offset=1, length=3) == b"irs"
        assert await store.get("v/obj", version_id=v2) == b"second!"
        assert (await store.stat("v/obj", version_id=v1)).size == len(b"first")

    async def test_an_unknown_version_is_not_found(self, store: ObjectStore) -> None:
        v1 = await store.put("v/one", b"data")
        await store.put("v/other", b"x")
        for version_id in ("0" * 32, "../v/other", "null"):
            with pytest.raises(ObjectNotFound):
                await store.get("v/one", version_id=version_id)
        with pytest.raises(ObjectNotFound):
            await store.get("v/missing", version_id=v1)

    async def test_a_delete_marker_hides_the_key_but_not_the_locked_version(
        self, store: ObjectStore, clock: Clock, attacker: Attacker
    ) -> None:
        until = _whole_seconds_from(clock, 600)
        v1 = await store.put("v/pack", b"locked bytes", retain_until=until)
        await attacker.delete_marker("v/pack")
        with pytest.raises(ObjectNotFound):
            await store.get("v/pack")
        assert await store.get("v/pack", version_id=v1) == b"locked bytes"
        assert await store.get("v/pack", version_id=v1, offset=7, length=5) == b"bytes"
        assert (await store.stat("v/pack", version_id=v1)).retain_until == until

    async def test_a_put_over_a_locked_key_leaves_the_version_readable(
        self, store: ObjectStore, clock: Clock, attacker: Attacker
    ) -> None:
        until = _whole_seconds_from(clock, 600)
        v1 = await store.put("v/manifest", b"the real manifest", retain_until=until)
        await attacker.overwrite("v/manifest", b"forged")
        assert await store.get("v/manifest") == b"forged"
        assert await store.get("v/manifest", version_id=v1) == b"the real manifest"
        later = until + dt.timedelta(seconds=300)
        await store.extend_retention("v/manifest", later, version_id=v1)
        assert (await store.stat("v/manifest", version_id=v1)).retain_until == later
        await attacker.delete_marker("v/manifest")
        assert await store.get("v/manifest", version_id=v1) == b"the real manifest"

    # -- listing ------------------------------------------------------------

    async def test_list_by_prefix_in_lexicographic_order(self, store: ObjectStore) -> None:
        # No key is a '/'-prefix of another ("a" and "a/b"): posix-backed S3 servers refuse that.
        keys = ["b/2", "a/10", "a/2", "a/1", "ab", "a/1x/y", "a-z", "c/z/y"]
        for key in keys:
            await store.put(key, key.encode())
        assert await _keys(store, "a/") == ["a/1", "a/10", "a/1x/y", "a/2"]
        assert await _keys(store, "a") == ["a-z", "a/1", "a/10", "a/1x/y", "a/2", "ab"]
        assert await _keys(store, "") == sorted(keys)
        assert await _keys(store, "c/z/") == ["c/z/y"]
        assert await _keys(store, "a/1x/") == ["a/1x/y"]
        assert await _keys(store, "zz") == []

    async def test_list_versions_finds_what_markers_and_overwrites_hide(
        self, store: ObjectStore, clock: Clock, attacker: Attacker
    ) -> None:
        until = _whole_seconds_from(clock, 600)
        hidden = await store.put("vault/a/hidden", b"behind a marker", retain_until=until)
        replaced = await store.put("vault/a/replaced", b"the real one", retain_until=until)
        plain = await store.put("vault/b", b"plain")
        await store.put("vaultx", b"outside the prefix")
        await attacker.delete_marker("vault/a/hidden")
        await attacker.overwrite("vault/a/replaced", b"forged")
        assert await _keys(store, "vault/") == ["vault/a/replaced", "vault/b"]
        found = [v async for v in store.list_versions("vault/")]
        assert [v.key for v in found] == ["vault/a/hidden", "vault/a/replaced", "vault/a/replaced", "vault/b"]
        assert {(v.key, v.version_id) for v in found} >= {
            ("vault/a/hidden", hidden),
            ("vault/a/replaced", replaced),
            ("vault/b", plain),
        }
        contents = {await store.get(v.key, version_id=v.version_id) for v in found}
        assert contents == {b"behind a marker", b"the real one", b"forged", b"plain"}
        assert [v async for v in store.list_versions("nothing/")] == []

    # -- deletion and Object Lock ---------------------------------------------

    async def test_delete_of_unlocked_object_removes_it(self, store: ObjectStore) -> None:
        await store.put("d/gone", b"bytes")
        await store.put("d/kept", b"other")
        await store.delete("d/gone")
        with pytest.raises(ObjectNotFound):
            await store.get("d/gone")
        with pytest.raises(ObjectNotFound):
            await store.stat("d/gone")
        assert await _keys(store, "d/") == ["d/kept"]
        await store.put("d/gone", b"again")  # the key can be written afresh
        assert await store.get("d/gone") == b"again"

    async def test_delete_removes_every_version(self, store: ObjectStore) -> None:
        await store.put("d/versions", b"v1")
        await store.put("d/versions", b"v2")
        await store.delete("d/versions")
        with pytest.raises(ObjectNotFound):
            await store.get("d/versions")
        assert await _keys(store, "d/") == []

    async def test_locked_object_cannot_be_deleted_or_overwritten(self, store: ObjectStore, clock: Clock) -> None:
        until = _whole_seconds_from(clock, 600)
        await store.put("l/pack", b"precious", retain_until=until)
        with pytest.raises(ObjectLocked):
            await store.delete("l/pack")
        with pytest.raises(ObjectLocked):
            await store.put("l/pack", b"tampered")
        with pytest.raises(ObjectLocked):
            await store.put("l/pack", b"tampered", retain_until=until + dt.timedelta(days=1))
        assert await store.get("l/pack") == b"precious"
        info = await store.stat("l/pack")
        assert (info.size, info.retain_until) == (len(b"precious"), until)
        assert await _keys(store, "l/") == ["l/pack"]

    async def test_lock_expires(self, store: ObjectStore, clock: Clock) -> None:
        until = _whole_seconds_from(clock, 2)
        await store.put("l/short", b"brief", retain_until=until)
        with pytest.raises(ObjectLocked):
            await store.delete("l/short")
        await _let_time_pass(clock, until)
        await store.delete("l/short")
        with pytest.raises(ObjectNotFound):
            await store.get("l/short")
        assert await _keys(store, "l/") == []

    async def test_extend_retention_only_moves_the_date_later(self, store: ObjectStore, clock: Clock) -> None:
        first = _whole_seconds_from(clock, 300)
        later = first + dt.timedelta(seconds=300)
        await store.put("e/pack", b"data", retain_until=first)
        await store.extend_retention("e/pack", later)
        assert (await store.stat("e/pack")).retain_until == later
        await store.extend_retention("e/pack", first)  # earlier: ignored, never shortened
        assert (await store.stat("e/pack")).retain_until == later
        with pytest.raises(ObjectLocked):
            await store.delete("e/pack")
        assert await store.get("e/pack") == b"data"

    async def test_extend_retention_locks_an_unlocked_object(self, store: ObjectStore, clock: Clock) -> None:
        await store.put("e/open", b"data")
        until = _whole_seconds_from(clock, 300)
        await store.extend_retention("e/open", until)
        assert (await store.stat("e/open")).retain_until == until
        with pytest.raises(ObjectLocked):
            await store.delete("e/open")
        with pytest.raises(ObjectLocked):
            await store.put("e/open", b"overwrite")
        assert await store.get("e/open") == b"data"

    async def test_concurrent_puts_and_gets(self, store: ObjectStore) -> None:
        keys = [f"c/{i:03d}" for i in range(40)]
        await asyncio.gather(*(store.put(key, key.encode() * 100) for key in keys))
        values = await asyncio.gather(*(store.get(key) for key in keys))
        assert values == [key.encode() * 100 for key in keys]
        assert await _keys(store, "c/") == keys
