"""The object store port: where packs and manifests live (S3 in production).

Adapters: ``strongroom_platform.objectstore_s3.S3ObjectStore`` (any S3 server with
Object Lock, written against the S3 API only), ``objectstore_fs.FilesystemObjectStore``
(standalone mode) and ``testing.InMemoryObjectStore``. All pass
``strongroom_testing.contracts.objectstore.ObjectStoreContract``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


class ObjectStoreError(Exception):
    """Base class of object store failures."""


class ObjectNotFound(ObjectStoreError):
    """The key does not exist."""


class ObjectLocked(ObjectStoreError):
    """The object is under retention (Object Lock COMPLIANCE) and cannot be deleted or altered."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    # None when the object carries no retention.
    retain_until: dt.datetime | None


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """One stored version of a key (never a delete marker)."""

    key: str
    # None for an object written before versions existed (filesystem store): read it without an id.
    version_id: str | None


class ObjectStore(Protocol):
    """A flat key -> bytes store with write-once, lockable objects.

    Guarantees every adapter gives:
    - ``put`` is atomic: a reader sees the whole object or nothing; after it
      returns, ``get`` returns exactly the bytes written (read-after-write).
    - An object put with ``retain_until`` can be neither deleted nor
      overwritten before that time: ``delete`` raises :class:`ObjectLocked`
      and the bytes stay readable. ``extend_retention`` can only move the date
      later; an earlier date is ignored.
    - Keys are written once by design (content-addressed or random); writing an
      existing unlocked key replaces it.
    - Every ``put`` creates a new *version* and returns its id (S3's ``VersionId``;
      the filesystem store and the in-memory fake make their own). A version's
      bytes never change, and reading by version id (``get``/``stat`` with
      ``version_id``) returns them whatever happened to the key since: a later
      version written over it, or a delete marker (a plain S3 DELETE, which
      hides the key from unversioned reads but removes no bytes). Callers that
      must read what they wrote — packs, manifests — record the id and read by
      it (ADR 0025). Version ids are opaque text of at most 1024 characters.
    - Keys are '/'-separated, without a leading '/', of printable ASCII. A key
      is never a '/'-prefix of another key ("a" and "a/b"): S3 servers backed
      by a POSIX filesystem (versitygw) refuse that, so callers must not rely on it.
    """

    async def put(
        self, key: str, data: bytes, *, retain_until: dt.datetime | None = None, new_key: bool = False
    ) -> str:
        """Store ``data`` under ``key``, locked until ``retain_until`` when given; return the new version's id.

        ``new_key=True`` promises that nothing was ever written under ``key`` (it is a hash of
        content with fresh random bytes in it, such as a pack's SHA-256): the adapter may then
        skip its check for a locked object there, a round trip per object on S3.
        """
        ...

    async def get(
        self, key: str, *, offset: int = 0, length: int | None = None, version_id: str | None = None
    ) -> bytes:
        """Read the object, or ``length`` bytes of it from ``offset``. Raises ObjectNotFound.

        Without ``version_id`` the current version (ObjectNotFound behind a delete marker); with
        it exactly that version (ObjectNotFound if the key has no such version).
        """
        ...

    async def stat(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        """Size and retention of the object (of that version when given). Raises ObjectNotFound."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object (every stored version of it). Missing keys are not an error.

        Raises ObjectLocked, leaving the object intact, while it is under retention.
        """
        ...

    async def extend_retention(self, key: str, retain_until: dt.datetime, *, version_id: str | None = None) -> None:
        """Lock the object (that version when given) until at least ``retain_until``. Raises ObjectNotFound."""
        ...

    def list(self, prefix: str) -> AsyncIterator[str]:
        """Yield the keys that start with ``prefix``, in lexicographic order."""
        ...

    def list_versions(self, prefix: str) -> AsyncIterator[ObjectVersion]:
        """Yield every stored version of every key that starts with ``prefix``, delete markers left out.

        Unlike :meth:`list`, a key whose current version is a delete marker, and versions a later
        put replaced, are included: what a disaster recovery must find whatever was done to the
        keys. Keys come in lexicographic order; the versions of one key in no particular order.
        """
        ...
