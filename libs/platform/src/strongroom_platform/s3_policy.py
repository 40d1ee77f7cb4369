"""Least-privilege S3 identities (ADR 0035): what each one may do on the backup bucket.

Two identities touch the bucket:

- **gateway** writes packs, manifests and vault records, reads them back, and lengthens their
  Object Lock retention (ADR 0010; COMPLIANCE retention can only be lengthened). It can delete
  nothing: no ``DeleteObject`` (a delete marker would hide a point from a reader of the latest
  version), no ``DeleteObjectVersion``, no governance bypass, no bucket configuration.
- **reclaimer** frees the storage of expired versions (issue "lifecycle"): it reads and lists,
  and removes an object version by its id. The S3 server itself refuses that before the
  version's retention date; the identity cannot lengthen, shorten or bypass a lock, write
  objects, or add delete markers.

Creating the bucket (with Object Lock) and attaching these policies is a deployment step done
once with the S3 server's administrator credentials, which no Strongroom process holds.

The same action lists render as an identity policy (AWS IAM, ``mc admin policy create`` on
MinIO) or as one bucket policy naming each identity as a principal (versitygw, AWS).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

__all__ = ["S3Identity", "actions", "bucket_policy", "identity_policy"]

_VERSION = "2012-10-17"


class S3Identity(enum.StrEnum):
    GATEWAY = "gateway"
    RECLAIMER = "reclaimer"


# Bucket-level reads every client needs: the SDK asks for the bucket's region, the gateway checks
# at start that the bucket exists and has Object Lock.
_BUCKET_READS = ("s3:ListBucket", "s3:GetBucketLocation")

_ACTIONS: dict[S3Identity, tuple[str, ...]] = {
    S3Identity.GATEWAY: (
        *_BUCKET_READS,
        "s3:GetBucketObjectLockConfiguration",
        "s3:GetBucketVersioning",
        # Vault records and packs are found behind delete markers and forged versions (ADR 0032):
        # the refusal to mint a key the bucket holds, and the rebuild from the bucket.
        "s3:ListBucketVersions",
        "s3:PutObject",
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:GetObjectRetention",
        # Lengthens a lock only: a COMPLIANCE retention date cannot be moved earlier by anyone.
        "s3:PutObjectRetention",
    ),
    S3Identity.RECLAIMER: (
        *_BUCKET_READS,
        "s3:ListBucketVersions",
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:GetObjectRetention",
        # By version id only, and refused by the server until the version's lock has passed.
        "s3:DeleteObjectVersion",
    ),
}


def actions(identity: S3Identity) -> tuple[str, ...]:
    """The S3 actions ``identity`` is granted; anything else is denied."""
    return _ACTIONS[identity]


def _resources(bucket: str) -> list[str]:
    if not bucket or "/" in bucket or "*" in bucket:
        raise ValueError(f"invalid bucket name {bucket!r}")
    return [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]


def identity_policy(identity: S3Identity, bucket: str) -> dict[str, Any]:
    """An identity policy for ``identity`` on ``bucket`` (attach it to that identity's user)."""
    statement = {"Effect": "Allow", "Action": list(actions(identity)), "Resource": _resources(bucket)}
    return {"Version": _VERSION, "Statement": [statement]}


def bucket_policy(bucket: str, principals: Mapping[S3Identity, str]) -> dict[str, Any]:
    """One bucket policy granting each identity its actions; ``principals`` maps it to its access key (or ARN).

    On a server that enforces bucket policies, an identity not named here gets nothing on the bucket.
    """
    statements = [
        {
            "Sid": f"strongroom-{identity.value}",
            "Effect": "Allow",
            "Principal": {"AWS": [principal]},
            "Action": list(actions(identity)),
            "Resource": _resources(bucket),
        }
        for identity, principal in principals.items()
    ]
    if not statements:
        raise ValueError("a bucket policy needs at least one principal")
    return {"Version": _VERSION, "Statement": statements}
