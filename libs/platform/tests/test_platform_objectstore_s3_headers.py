"""What the S3 adapter's PUT sends over the wire: no MD5 of a checksummed payload over HTTPS, no HEAD for a new key."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import zlib
from typing import Any

import pytest
from minio import Minio
from strongroom_platform.objectstore import ObjectLocked
from strongroom_platform.objectstore_s3 import ChecksumMinio, S3ObjectStore
from strongroom_platform.testing import FakeClock
from urllib3 import HTTPHeaderDict, HTTPResponse, PoolManager


class _RecordingHttp(PoolManager):
    """A urllib3 pool that sends nothing: records every request and answers like an S3 server would."""

    def __init__(self, *, locked_until: dt.datetime | None = None) -> None:
        super().__init__()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._locked_until = locked_until

    def urlopen(  # type: ignore[override]
        self, method: str, url: str, body: Any = None, headers: Any = None, **_: Any
    ) -> HTTPResponse:
        self.requests.append((method, {k.lower(): v for k, v in dict(headers or {}).items()}))
        if method == "HEAD":
            if self._locked_until is None:
                return HTTPResponse(body=b"", headers=HTTPHeaderDict({"x-amz-request-id": "1"}), status=404)
            until = self._locked_until.strftime("%Y-%m-%dT%H:%M:%SZ")
            head = {"content-length": "1", "x-amz-object-lock-retain-until-date": until}
            return HTTPResponse(body=b"", headers=HTTPHeaderDict(head), status=200)
        return HTTPResponse(body=b"", headers=HTTPHeaderDict({"x-amz-version-id": "v1", "etag": '"e"'}), status=200)


def _store(client_class: type[Minio], *, secure: bool, http: _RecordingHttp) -> S3ObjectStore:
    client = client_class("s3.test:9000", access_key="a", secret_key="s" * 16, secure=secure, region="us-east-1",
                          http_client=http)  # fmt: skip
    return S3ObjectStore(client, "bucket", clock=FakeClock())


def _put_headers(http: _RecordingHttp) -> dict[str, str]:
    puts = [headers for method, headers in http.requests if method == "PUT"]
    assert len(puts) == 1
    return puts[0]


async def test_checksummed_put_over_https_is_neither_md5_summed_nor_payload_signed() -> None:
    http = _RecordingHttp()
    data = b"pack bytes" * 1000
    retain = FakeClock().now() + dt.timedelta(days=31)
    assert await _store(ChecksumMinio, secure=True, http=http).put("packs/a/p", data, retain_until=retain) == "v1"
    headers = _put_headers(http)
    assert "content-md5" not in headers
    assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert headers["x-amz-checksum-crc32"] == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert headers["x-amz-object-lock-mode"] == "COMPLIANCE"  # Object Lock still on every object
    assert "x-amz-object-lock-retain-until-date" in headers


async def test_plain_minio_still_md5s_and_plain_http_still_signs_the_payload() -> None:
    data = b"x" * 4096
    http = _RecordingHttp()
    await _store(Minio, secure=True, http=http).put("k", data)
    assert _put_headers(http)["content-md5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    http = _RecordingHttp()
    await _store(ChecksumMinio, secure=False, http=http).put("k", data)
    assert _put_headers(http)["x-amz-content-sha256"] == hashlib.sha256(data).hexdigest()


async def test_new_key_skips_the_lock_check_and_an_ordinary_put_still_refuses_a_locked_key() -> None:
    http = _RecordingHttp(locked_until=FakeClock().now() + dt.timedelta(days=1))
    store = _store(ChecksumMinio, secure=True, http=http)
    with pytest.raises(ObjectLocked):
        await store.put("k", b"v")
    assert [method for method, _ in http.requests] == ["HEAD"]
    http.requests.clear()
    assert await store.put("packs/a/new", b"v", new_key=True) == "v1"
    assert [method for method, _ in http.requests] == ["PUT"]
