"""Least-privilege S3 identities (ADR 0035), tried as an attacker holding each identity's credentials.

Against the real S3 server: a bucket with Object Lock, the bucket policy rendered by
``strongroom_platform.s3_policy``, and one account per identity. The gateway's adapter works
with the gateway identity alone; neither identity can erase or hide a locked version.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from minio import Minio
from minio.commonconfig import COMPLIANCE
from minio.error import S3Error
from minio.retention import Retention
from strongroom_platform import admin
from strongroom_platform.clock import SystemClock
from strongroom_platform.objectstore import ObjectStoreError
from strongroom_platform.objectstore_s3 import S3ObjectStore
from strongroom_platform.s3_policy import S3Identity, actions, bucket_policy, identity_policy
from strongroom_testing.fixtures import S3Config

# -- the policy documents (no server) --------------------------------------------------------


def test_the_gateway_may_delete_nothing_and_bypass_nothing() -> None:
    granted = actions(S3Identity.GATEWAY)
    assert not [a for a in granted if "Delete" in a or "Bypass" in a or a.endswith("*")]
    assert "s3:PutObjectRetention" in granted  # lengthening a lock (ADR 0010)
    assert not [a for a in granted if a.startswith("s3:PutBucket") or a == "s3:PutObjectLegalHold"]


def test_the_reclaimer_deletes_only_by_version_and_writes_nothing() -> None:
    granted = actions(S3Identity.RECLAIMER)
    assert [a for a in granted if "Delete" in a] == ["s3:DeleteObjectVersion"]
    assert not [a for a in granted if a.startswith("s3:Put") or "Bypass" in a or a.endswith("*")]


def test_policies_name_only_the_bucket() -> None:
    policy = identity_policy(S3Identity.GATEWAY, "vault")
    assert policy["Statement"][0]["Resource"] == ["arn:aws:s3:::vault", "arn:aws:s3:::vault/*"]
    with pytest.raises(ValueError, match="invalid bucket"):
        identity_policy(S3Identity.GATEWAY, "*")
    with pytest.raises(ValueError, match="at least one principal"):
        bucket_policy("vault", {})


# -- against the S3 server -------------------------------------------------------------------


@dataclass(frozen=True)
class Identities:
    bucket: str
    root: Minio
    gateway: Minio
    reclaimer: Minio
    stranger: Minio
    gateway_store: S3ObjectStore


def _client(config: S3Config, access: str, secret: str) -> Minio:
    return Minio(config.endpoint, access_key=access, secret_key=secret, secure=config.secure, region="us-east-1")


def _user(config: S3Config, create_user: Callable[[str, str], None]) -> tuple[str, str]:
    access, secret = f"sr-{uuid.uuid4().hex[:12]}", secrets.token_urlsafe(24)
    create_user(access, secret)
    return access, secret


@pytest.fixture
def identities(s3_config: S3Config) -> Identities:
    if s3_config.create_user is None:
        pytest.skip(
            "this S3 server offers no account creation through the S3 API; the identities are tested "
            "against the local versitygw (MinIO: attach the identity policies with `mc admin policy`)"
        )
    gateway, reclaimer, stranger = (_user(s3_config, s3_config.create_user) for _ in range(3))
    bucket = f"least-{uuid.uuid4().hex[:16]}"
    root = _client(s3_config, s3_config.access_key, s3_config.secret_key)
    root.make_bucket(bucket, object_lock=True)
    principals = {S3Identity.GATEWAY: gateway[0], S3Identity.RECLAIMER: reclaimer[0]}
    root.set_bucket_policy(bucket, json.dumps(bucket_policy(bucket, principals)))
    gateway_client = _client(s3_config, *gateway)
    return Identities(
        bucket=bucket,
        root=root,
        gateway=gateway_client,
        reclaimer=_client(s3_config, *reclaimer),
        stranger=_client(s3_config, *stranger),
        gateway_store=S3ObjectStore(gateway_client, bucket, clock=SystemClock()),
    )


def _whole_seconds_from_now(seconds: float) -> dt.datetime:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).replace(microsecond=0) + dt.timedelta(seconds=1)


def _denied(call: Callable[[], object]) -> str:
    """Run a call that the server must refuse; return its message."""
    with pytest.raises(S3Error) as refused:
        call()
    assert refused.value.code == "AccessDenied", refused.value
    return str(refused.value.message)


def _put(client: Minio, bucket: str, key: str, data: bytes) -> None:
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # an Object Lock bucket wants an integrity header
    client.put_object(bucket, key, io.BytesIO(data), len(data), metadata={"Content-MD5": md5})


@pytest.mark.integration
async def test_the_gateway_adapter_works_with_the_gateway_identity_alone(identities: Identities) -> None:
    store = identities.gateway_store
    await store.ensure_bucket()  # exists, has Object Lock: readable with the gateway's grants
    until = _whole_seconds_from_now(60)
    version = await store.put("packs/ab/one", b"pack bytes", retain_until=until)
    assert await store.get("packs/ab/one", version_id=version) == b"pack bytes"
    assert (await store.stat("packs/ab/one", version_id=version)).retain_until == until
    await store.extend_retention("packs/ab/one", until + dt.timedelta(days=1), version_id=version)
    assert (await store.stat("packs/ab/one", version_id=version)).retain_until == until + dt.timedelta(days=1)
    assert [key async for key in store.list("packs/")] == ["packs/ab/one"]
    # Every version, also behind a marker: how the gateway finds vault records (ADR 0032).
    assert [(v.key, v.version_id) async for v in store.list_versions("packs/")] == [("packs/ab/one", version)]


@pytest.mark.integration
async def test_the_gateway_cannot_create_a_bucket(identities: Identities, s3_config: S3Config) -> None:
    missing = S3ObjectStore(identities.gateway, f"least-missing-{uuid.uuid4().hex[:8]}", clock=SystemClock())
    with pytest.raises(ObjectStoreError, match="cannot create bucket .*AccessDenied"):
        await missing.ensure_bucket()


@pytest.mark.integration
async def test_the_gateway_can_neither_delete_nor_hide_nor_shorten(identities: Identities) -> None:
    bucket, gateway = identities.bucket, identities.gateway
    until = _whole_seconds_from_now(120)
    version = await identities.gateway_store.put("manifests/p1", b"manifest", retain_until=until)

    _denied(lambda: gateway.remove_object(bucket, "manifests/p1"))  # a delete marker would hide the point
    _denied(lambda: gateway.remove_object(bucket, "manifests/p1", version_id=version))
    shorter = Retention(COMPLIANCE, until - dt.timedelta(seconds=60))
    _denied(lambda: gateway.set_object_retention(bucket, "manifests/p1", shorter, version_id=version))
    _denied(lambda: gateway.set_bucket_policy(bucket, json.dumps(identity_policy(S3Identity.GATEWAY, bucket))))
    _denied(lambda: gateway.delete_bucket_policy(bucket))

    latest = identities.root.get_object(bucket, "manifests/p1")
    try:
        assert latest.read() == b"manifest"  # still the current version: nothing was hidden
    finally:
        latest.close()
        latest.release_conn()


@pytest.mark.integration
async def test_the_reclaimer_removes_a_version_only_after_its_lock(identities: Identities) -> None:
    bucket, reclaimer = identities.bucket, identities.reclaimer
    until = _whole_seconds_from_now(2)
    version = await identities.gateway_store.put("packs/cd/two", b"expired soon", retain_until=until)

    response = reclaimer.get_object(bucket, "packs/cd/two", version_id=version)
    try:
        assert response.read() == b"expired soon"
    finally:
        response.close()
        response.release_conn()
    _denied(lambda: _put(reclaimer, bucket, "packs/cd/planted", b"x"))
    _denied(lambda: reclaimer.remove_object(bucket, "packs/cd/two"))  # no delete markers either
    later = Retention(COMPLIANCE, until + dt.timedelta(days=1))
    _denied(lambda: reclaimer.set_object_retention(bucket, "packs/cd/two", later, version_id=version))
    message = _denied(lambda: reclaimer.remove_object(bucket, "packs/cd/two", version_id=version))
    assert "lock" in message.lower()  # refused by the lock, not by the policy

    # The server's clock decides; wait until its lock date has passed on ours too.
    await asyncio.sleep((until - dt.datetime.now(dt.UTC)).total_seconds() + 0.5)
    reclaimer.remove_object(bucket, "packs/cd/two", version_id=version)
    with pytest.raises(S3Error) as gone:
        identities.root.stat_object(bucket, "packs/cd/two", version_id=version)
    assert gone.value.code in {"NoSuchKey", "NoSuchVersion"}


@pytest.mark.integration
async def test_an_identity_the_policy_does_not_name_gets_nothing(identities: Identities) -> None:
    bucket, stranger = identities.bucket, identities.stranger
    version = await identities.gateway_store.put("packs/ef/three", b"secret", retain_until=_whole_seconds_from_now(60))
    _denied(lambda: stranger.get_object(bucket, "packs/ef/three", version_id=version))
    _denied(lambda: list(stranger.list_objects(bucket, prefix="packs/")))
    _denied(lambda: _put(stranger, bucket, "packs/ef/planted", b"x"))
    _denied(lambda: stranger.remove_object(bucket, "packs/ef/three", version_id=version))


def test_strongroom_admin_prints_the_policies(capsys: pytest.CaptureFixture[str]) -> None:
    assert admin.run(["s3-policy", "reclaimer", "--bucket", "vault"], {}) == 0
    assert json.loads(capsys.readouterr().out) == identity_policy(S3Identity.RECLAIMER, "vault")
    assert admin.run(["s3-policy", "gateway", "--bucket", "vault", "--principal", "gw-key"], {}) == 0
    assert json.loads(capsys.readouterr().out) == bucket_policy("vault", {S3Identity.GATEWAY: "gw-key"})
    assert admin.run(["s3-policy", "gateway", "--bucket", "a/b"], {}) == 2
    assert "invalid bucket name" in capsys.readouterr().err
