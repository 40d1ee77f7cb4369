"""LocalVersityGW: Object Lock bucket via the minio SDK, COMPLIANCE retention refuses deletion."""

from __future__ import annotations

import http.client
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from minio import Minio
from minio.commonconfig import COMPLIANCE
from minio.error import S3Error
from minio.retention import Retention
from strongroom_servers import VERSITYGW_VERSION, LocalVersityGW
from strongroom_testing.fixtures import start_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalVersityGW]:
    with start_or_skip(LocalVersityGW(tmp_path_factory.mktemp("versitygw"))) as server:
        yield server


@pytest.fixture
def client(gateway: LocalVersityGW) -> Minio:
    return Minio(gateway.endpoint, access_key=gateway.access_key, secret_key=gateway.secret_key, secure=False)


def test_server_info(gateway: LocalVersityGW) -> None:
    assert gateway.server_info() == f"versitygw {VERSITYGW_VERSION} (Server: VERSITYGW)"


def test_connections_are_kept_alive(gateway: LocalVersityGW) -> None:
    # versitygw's own default closes every connection after one answer (ADR 0070).
    host, port = gateway.endpoint.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        sockets = []
        for _ in range(3):
            conn.request("GET", "/")  # unauthenticated: 403, with a body, as any S3 server answers
            response = conn.getresponse()
            response.read()
            assert response.getheader("Connection", "").lower() != "close"
            assert not response.will_close
            sockets.append(conn.sock)
        assert sockets[0] is not None and all(sock is sockets[0] for sock in sockets)
    finally:
        conn.close()


def test_compliance_retention_blocks_delete(client: Minio) -> None:
    bucket = f"worm-{uuid.uuid4().hex[:12]}"
    client.make_bucket(bucket, object_lock=True)
    # Creating a bucket with Object Lock turns versioning on (needs --versioning-dir).
    assert client.get_bucket_versioning(bucket).status == "Enabled"

    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    data = b"immutable backup chunk"
    put = client.put_object(bucket, "chunk", io.BytesIO(data), len(data), retention=Retention(COMPLIANCE, until))
    assert put.version_id

    retention = client.get_object_retention(bucket, "chunk", version_id=put.version_id)
    assert retention is not None
    assert retention.mode == COMPLIANCE
    assert retention.retain_until_date == until

    with pytest.raises(S3Error) as refused:
        client.remove_object(bucket, "chunk", version_id=put.version_id)
    assert refused.value.code == "AccessDenied"

    # COMPLIANCE retention can be extended but never shortened (v1.7.0 wrongly allowed this).
    with pytest.raises(S3Error) as shortened:
        client.set_object_retention(
            bucket, "chunk", Retention(COMPLIANCE, until - timedelta(hours=1)), version_id=put.version_id
        )
    assert shortened.value.code == "AccessDenied"

    response = client.get_object(bucket, "chunk", version_id=put.version_id)
    try:
        assert response.read() == data
    finally:
        response.close()
        response.release_conn()


def test_legal_hold_blocks_delete(client: Minio) -> None:
    bucket = f"hold-{uuid.uuid4().hex[:12]}"
    client.make_bucket(bucket, object_lock=True)
    put = client.put_object(bucket, "held", io.BytesIO(b"x"), 1, legal_hold=True)
    assert client.is_object_legal_hold_enabled(bucket, "held", version_id=put.version_id)
    with pytest.raises(S3Error):
        client.remove_object(bucket, "held", version_id=put.version_id)
    client.disable_object_legal_hold(bucket, "held", version_id=put.version_id)
    client.remove_object(bucket, "held", version_id=put.version_id)
