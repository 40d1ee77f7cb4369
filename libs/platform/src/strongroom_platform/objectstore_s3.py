"""S3 adapter of the :class:`~strongroom_platform.objectstore.ObjectStore` port.

Written against the S3 API only (no MinIO admin calls), so the same code runs on
versitygw (tests), MinIO and AWS (production). The bucket has Object Lock (and
therefore versioning) enabled; retention is COMPLIANCE mode, which nobody, not
even the root account, can shorten or bypass.

Consequences of versioning that this adapter hides from callers:

- A plain DELETE only adds a delete marker; the bytes stay. :meth:`delete`
  therefore removes every version (and marker) of the key by version id.
- A PUT onto a locked key does not fail on S3: it adds a new current version
  on top of the locked one. :meth:`put` refuses it with ObjectLocked instead,
  as the port promises.
- Both still happen when someone uses the credentials directly. :meth:`put`
  returns the S3 ``VersionId`` of what it wrote, and reads and retention
  extensions given that id address exactly that version, so neither a delete
  marker nor a later version changes what they see (ADR 0025).

The minio SDK is blocking; every call runs in a worker thread, at most
``max_concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import datetime as dt
import io
import itertools
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from xml.etree import ElementTree

import urllib3
from minio import Minio
from minio.commonconfig import COMPLIANCE
from minio.error import S3Error
from minio.retention import Retention

from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.objectstore import (
    ObjectInfo,
    ObjectLocked,
    ObjectNotFound,
    ObjectStoreError,
    ObjectVersion,
)
from strongroom_platform.settings import S3Settings
from strongroom_platform.threads import WorkerThreads
from strongroom_platform.tls import client_ssl_context

__all__ = ["ChecksumMinio", "S3ObjectStore"]

T = TypeVar("T")

_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchVersion", "NoSuchObject"})
_RETAIN_UNTIL_HEADER = "x-amz-object-lock-retain-until-date"
# Keys listed per worker-thread hop; S3 pages hold at most 1000 keys anyway.
_LIST_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class _Version:
    version_id: str
    is_latest: bool
    is_delete_marker: bool


def _ceil_second(when: dt.datetime) -> dt.datetime:
    """``when`` in UTC, rounded up to a whole second.

    Some servers (versitygw) keep retention dates with second precision and
    truncate; rounding up keeps "locked until at least ``when``" true.
    """
    if when.tzinfo is None:
        raise ValueError("retain_until must be timezone-aware")
    when = when.astimezone(dt.UTC)
    if when.microsecond:
        when = when.replace(microsecond=0) + dt.timedelta(seconds=1)
    return when


_FRACTION = re.compile(r"\.(\d{1,6})\d*")


def _parse_s3_time(raw: str) -> dt.datetime:
    """An ISO 8601 UTC timestamp as S3 servers write it (``Z``, 0-9 fractional digits)."""
    text = _FRACTION.sub(lambda m: "." + m.group(1), raw.strip()).replace("Z", "+00:00")
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def _local(tag: str) -> str:
    """An XML tag without its namespace (servers differ on whether they send one)."""
    return tag.rsplit("}", 1)[-1]


def _child_text(element: ElementTree.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return None


# S3's limits on one part of a multipart upload (and so on what minio accepts as part_size).
_MIN_PART_SIZE = 5 << 20
_MAX_PART_SIZE = 5 << 30


def _single_part_size(length: int) -> int:
    """A part size that makes minio send ``length`` bytes in one PUT.

    minio's automatic part size is 5 MiB: a 16 MiB pack became a multipart
    upload of four parts (six requests). Objects over S3's 5 GiB single-PUT
    limit still go in parts.
    """
    return min(max(length, _MIN_PART_SIZE), _MAX_PART_SIZE)


_CHECKSUM_PREFIX = "x-amz-checksum-"
_NO_MD5 = "-"


def _crc32_headers(data: bytes) -> dict[str, str]:
    # AWS (and moto) refuse PUTs into an Object Lock bucket without Content-MD5
    # or an x-amz-checksum-* header; minio-py sends x-amz-* metadata verbatim.
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    return {"x-amz-sdk-checksum-algorithm": "CRC32", _CHECKSUM_PREFIX + "crc32": crc}


class ChecksumMinio(Minio):
    """``Minio`` that does not MD5 a payload that already carries an ``x-amz-checksum-*`` header.

    Over HTTPS minio signs with ``UNSIGNED-PAYLOAD`` (TLS protects the bytes in flight) but still
    computes a Content-MD5 of every body, the slowest hash there is (~0.6 GB/s here): a second of
    CPU per gigabyte of packs. The CRC32 checksum :meth:`S3ObjectStore.put` sends is what S3
    checks the stored bytes against instead, and what Object Lock PUTs require (Content-MD5 *or*
    a checksum). Over plain HTTP nothing changes: the payload's SHA-256 is signed.
    """

    def _build_headers(
        self,
        host: str,
        headers: dict[str, Any] | None = None,
        body: bytes | None = None,
        creds: Any = None,
    ) -> tuple[dict[str, Any], dt.datetime]:
        checksummed = bool(headers) and any(k.lower().startswith(_CHECKSUM_PREFIX) for k in headers or {})
        if not (body and creds and checksummed and self._base_url.is_https):
            return super()._build_headers(host, headers, body, creds)
        # minio computes the MD5 unless the caller set Content-MD5: set a placeholder, drop it after.
        marked = {**(headers or {}), "Content-MD5": _NO_MD5}
        built, date = super()._build_headers(host, marked, body, creds)
        del built["Content-MD5"]
        return built, date


class S3ObjectStore:
    """ObjectStore on one S3 bucket with Object Lock.

    Args:
        client: a configured ``minio.Minio`` client.
        bucket: the bucket; :meth:`ensure_bucket` creates it with Object Lock.
        clock: decides whether a retention date has passed for the checks done
            before writes and deletes (the server enforces the lock regardless).
        max_concurrency: S3 requests in flight at once (worker threads used).
    """

    def __init__(self, client: Minio, bucket: str, *, clock: Clock | None = None, max_concurrency: int = 8) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._client = client
        self._bucket = bucket
        self._clock: Clock = clock or SystemClock()
        self._slots = asyncio.Semaphore(max_concurrency)
        # Threads of its own: a transaction may wait on a bucket write (see strongroom_platform.threads).
        self._threads = WorkerThreads(max_concurrency, "s3")

    @classmethod
    def from_settings(cls, s3: S3Settings, *, clock: Clock | None = None, max_concurrency: int = 8) -> S3ObjectStore:
        """A store for ``s3`` with a connection pool sized to ``max_concurrency``.

        With ``s3.secure`` the endpoint's certificate is verified, against ``s3.ca_file`` when
        set (else the system roots), host name included.
        """
        tls: dict[str, Any] = {}
        if s3.secure and s3.ca_file is not None:
            tls["ssl_context"] = client_ssl_context(ca_file=s3.ca_file)
        http = urllib3.PoolManager(
            maxsize=max_concurrency,
            **tls,
            timeout=urllib3.Timeout(connect=10.0, read=120.0),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        client = ChecksumMinio(
            s3.endpoint,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            secure=s3.secure,
            region=s3.region,
            http_client=http,
        )
        return cls(client, s3.bucket, clock=clock, max_concurrency=max_concurrency)

    @property
    def bucket(self) -> str:
        return self._bucket

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._slots:
            return await self._threads.run(fn, *args, **kwargs)

    # -- bucket -----------------------------------------------------------

    async def ensure_bucket(self) -> None:
        """Create the bucket with Object Lock (and versioning) if it does not exist.

        Raises ObjectStoreError when the bucket exists without Object Lock:
        retention could not be enforced there, and S3 cannot add it afterwards
        on every server.
        """
        await self._call(self._ensure_bucket_sync)

    def _ensure_bucket_sync(self) -> None:
        if not self._client.bucket_exists(self._bucket):
            try:
                self._client.make_bucket(self._bucket, object_lock=True)
            except S3Error as exc:
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise ObjectStoreError(f"cannot create bucket {self._bucket}: {exc.code} {exc.message}") from exc
        # GetObjectLockConfiguration parsed here: minio's parser insists on a
        # DefaultRetention rule, which a lock-enabled bucket need not have.
        enabled = ""
        try:
            response = self._client._execute("GET", self._bucket, query_params={"object-lock": ""})
            enabled = _child_text(ElementTree.fromstring(response.data), "ObjectLockEnabled") or ""
        except S3Error as exc:
            if exc.code != "ObjectLockConfigurationNotFoundError":
                raise ObjectStoreError(f"cannot read Object Lock of {self._bucket}: {exc.code} {exc.message}") from exc
        if enabled != "Enabled":
            raise ObjectStoreError(
                f"bucket {self._bucket} exists without Object Lock; create it with Object Lock enabled or use another"
            )

    # -- objects ----------------------------------------------------------

    async def put(
        self, key: str, data: bytes, *, retain_until: dt.datetime | None = None, new_key: bool = False
    ) -> str:
        """Store ``data``; with ``retain_until``, under COMPLIANCE retention until then. Returns the VersionId.

        Raises ObjectLocked if ``key`` holds an object still under retention; with ``new_key``
        (nothing was ever written there) that check, a HEAD request, is skipped.
        """
        retention = None if retain_until is None else Retention(COMPLIANCE, _ceil_second(retain_until))
        return await self._call(self._put_sync, key, bytes(data), retention, new_key)

    def _put_sync(self, key: str, data: bytes, retention: Retention | None, new_key: bool = False) -> str:
        # S3 would happily stack a new version on a locked one; the port forbids it.
        current = None if new_key else self._retain_until_sync(key, None)
        if current is not None and current > self._clock.now():
            raise ObjectLocked(f"{key} is locked until {current.isoformat()}")
        try:
            result = self._client.put_object(
                self._bucket,
                key,
                io.BytesIO(data),
                len(data),
                metadata=_crc32_headers(data),  # type: ignore[arg-type]  # minio's DictType is too narrow
                retention=retention,
                part_size=_single_part_size(len(data)),
            )
        except S3Error as exc:
            raise self._error(exc, key) from exc
        if not result.version_id or result.version_id == "null":
            # Only an unversioned bucket answers so, and ensure_bucket refuses one without Object Lock.
            raise ObjectStoreError(f"S3 returned no version id for {self._bucket}/{key}; the bucket must be versioned")
        return result.version_id

    async def get(
        self, key: str, *, offset: int = 0, length: int | None = None, version_id: str | None = None
    ) -> bytes:
        """The object's bytes (of that version when given), or ``length`` bytes from ``offset`` (fewer at the end)."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        return await self._call(self._get_sync, key, offset, length, version_id)

    def _get_sync(self, key: str, offset: int, length: int | None, version_id: str | None) -> bytes:
        if length == 0:
            self._stat_sync(key, version_id)  # still raise ObjectNotFound for a missing key
            return b""
        try:
            # minio sends no Range header for (0, 0): the whole object.
            response = self._client.get_object(
                self._bucket, key, offset=offset, length=length or 0, version_id=version_id
            )
        except S3Error as exc:
            if exc.code == "InvalidRange":  # offset at or past the end of an existing object
                return b""
            raise self._error(exc, key, version_id) from exc
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    async def stat(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        """Size and retention (from the HEAD response headers) of the current version, or of ``version_id``."""
        return await self._call(self._stat_sync, key, version_id)

    def _stat_sync(self, key: str, version_id: str | None = None) -> ObjectInfo:
        try:
            obj = self._client.stat_object(self._bucket, key, version_id=version_id)
        except S3Error as exc:
            raise self._error(exc, key, version_id) from exc
        # GET ?retention is broken on some servers (versitygw, moto); HEAD carries the date too.
        raw = obj.metadata.get(_RETAIN_UNTIL_HEADER) if obj.metadata is not None else None
        retain_until = _parse_s3_time(raw) if raw else None
        if retain_until is None and version_id is not None:
            # versitygw leaves the header out of a HEAD of a version that is no longer current.
            retain_until = self._version_retention_sync(key, version_id)
        return ObjectInfo(key=key, size=obj.size or 0, retain_until=retain_until)

    def _version_retention_sync(self, key: str, version_id: str) -> dt.datetime | None:
        try:
            retention = self._client.get_object_retention(self._bucket, key, version_id=version_id)
        except S3Error as exc:
            if exc.code in _NOT_FOUND or exc.code in {"NoSuchObjectLockConfiguration", "InvalidRequest"}:
                return None
            raise self._error(exc, key, version_id) from exc
        if retention is None or retention.retain_until_date is None:
            return None
        return retention.retain_until_date.astimezone(dt.UTC)

    def _retain_until_sync(self, key: str, version_id: str | None) -> dt.datetime | None:
        """Retention date of the key (or version); None if unlocked or missing."""
        try:
            return self._stat_sync(key, version_id).retain_until
        except ObjectNotFound:
            return None

    async def delete(self, key: str) -> None:
        """Remove every version and delete marker of ``key``; nothing if it is missing.

        Raises ObjectLocked, deleting nothing, when any version is under retention.
        """
        await self._call(self._delete_sync, key)

    def _delete_sync(self, key: str) -> None:
        versions = self._versions_sync(key)
        now = self._clock.now()
        for version in versions:
            if version.is_delete_marker:
                continue
            until = self._retain_until_sync(key, version.version_id)
            if until is not None and until > now:
                raise ObjectLocked(f"{key} is locked until {until.isoformat()}")
        # The current version goes last, so a failure midway leaves the object readable as it was.
        for version in sorted(versions, key=lambda v: v.is_latest):
            try:
                self._client.remove_object(self._bucket, key, version_id=version.version_id)
            except S3Error as exc:
                if exc.code == "AccessDenied":  # a lock the pre-check could not see (clock skew, race)
                    raise ObjectLocked(f"{key}: {exc.message}") from exc
                if exc.code in _NOT_FOUND:
                    continue
                raise self._error(exc, key) from exc

    def _versions_sync(self, key: str) -> list[_Version]:
        """Every version and delete marker of exactly ``key`` (ListObjectVersions).

        Parsed here rather than with ``list_objects(include_version=True)``:
        minio 7.2 cannot parse the nanosecond timestamps versitygw writes on
        delete markers, and we only need keys and version ids.
        """
        found: list[_Version] = []
        key_marker = version_marker = ""
        while True:
            query: dict[str, str | list[str] | tuple[str]] = {
                "versions": "",
                "prefix": key,
                "max-keys": "1000",
                "delimiter": "",
            }
            if key_marker:
                query["key-marker"] = key_marker
            if version_marker:
                query["version-id-marker"] = version_marker
            try:
                response = self._client._execute("GET", self._bucket, query_params=query)
            except S3Error as exc:
                raise self._error(exc, key) from exc
            root = ElementTree.fromstring(response.data)
            for element in root:
                kind = _local(element.tag)
                if kind not in {"Version", "DeleteMarker"} or _child_text(element, "Key") != key:
                    continue
                found.append(
                    _Version(
                        version_id=_child_text(element, "VersionId") or "null",
                        is_latest=_child_text(element, "IsLatest") == "true",
                        is_delete_marker=kind == "DeleteMarker",
                    )
                )
            if _child_text(root, "IsTruncated") != "true":
                return found
            key_marker = _child_text(root, "NextKeyMarker") or ""
            version_marker = _child_text(root, "NextVersionIdMarker") or ""
            if not key_marker:
                return found

    async def list_versions(self, prefix: str) -> AsyncIterator[ObjectVersion]:
        """Every stored version of the keys under ``prefix`` (ListObjectVersions), delete markers left out."""
        key_marker = version_marker = ""
        while True:
            page, key_marker, version_marker = await self._call(
                self._versions_page_sync, prefix, key_marker, version_marker
            )
            for version in page:
                yield version
            if not key_marker:
                return

    def _versions_page_sync(
        self, prefix: str, key_marker: str, version_marker: str
    ) -> tuple[builtins.list[ObjectVersion], str, str]:
        """One page of ListObjectVersions: (versions, next key marker, next version marker); "" when done."""
        query: dict[str, str | list[str] | tuple[str]] = {"versions": "", "prefix": prefix, "max-keys": "1000"}
        if key_marker:
            query["key-marker"] = key_marker
        if version_marker:
            query["version-id-marker"] = version_marker
        try:
            response = self._client._execute("GET", self._bucket, query_params=query)
        except S3Error as exc:
            raise self._error(exc, prefix) from exc
        root = ElementTree.fromstring(response.data)
        page = [
            ObjectVersion(_child_text(element, "Key") or "", _child_text(element, "VersionId") or "null")
            for element in root
            if _local(element.tag) == "Version"
        ]
        if _child_text(root, "IsTruncated") != "true":
            return page, "", ""
        return page, _child_text(root, "NextKeyMarker") or "", _child_text(root, "NextVersionIdMarker") or ""

    async def extend_retention(self, key: str, retain_until: dt.datetime, *, version_id: str | None = None) -> None:
        """Move the retention date of the current version (or ``version_id``) later; an earlier date changes nothing."""
        await self._call(self._extend_sync, key, _ceil_second(retain_until), version_id)

    def _extend_sync(self, key: str, retain_until: dt.datetime, version_id: str | None) -> None:
        try:
            obj = self._client.stat_object(self._bucket, key, version_id=version_id)
        except S3Error as exc:
            raise self._error(exc, key, version_id) from exc
        raw = obj.metadata.get(_RETAIN_UNTIL_HEADER) if obj.metadata is not None else None
        current = _parse_s3_time(raw) if raw else None
        if current is not None and retain_until <= current:
            return  # COMPLIANCE retention can never be shortened; S3 would refuse anyway
        try:
            self._client.set_object_retention(
                self._bucket, key, Retention(COMPLIANCE, retain_until), version_id=obj.version_id
            )
        except S3Error as exc:
            raise self._error(exc, key) from exc

    async def list(self, prefix: str) -> AsyncIterator[str]:
        """Current keys starting with ``prefix``, in lexicographic order (S3 lists in UTF-8 byte order)."""
        objects = self._client.list_objects(self._bucket, prefix=prefix, recursive=True)
        iterator: Iterator[Any] = iter(objects)
        while True:
            chunk = await self._call(self._next_chunk, iterator)
            for key in chunk:
                yield key
            if len(chunk) < _LIST_CHUNK:
                return

    def _next_chunk(self, iterator: Iterator[Any]) -> builtins.list[str]:
        try:
            return [obj.object_name for obj in itertools.islice(iterator, _LIST_CHUNK)]
        except S3Error as exc:
            raise self._error(exc, "") from exc

    def _error(self, exc: S3Error, key: str, version_id: str | None = None) -> ObjectStoreError:
        if exc.code in _NOT_FOUND:
            return ObjectNotFound(key)
        if version_id is not None and exc.code == "InvalidArgument":
            # A version id the server cannot even parse names no version of this key.
            return ObjectNotFound(f"{key} (no version {version_id!r})")
        return ObjectStoreError(f"S3 {exc.code} on {self._bucket}/{key}: {exc.message}")
