"""ManifestService: the catalog's way to the decrypted manifests (ADR 0016)."""

from __future__ import annotations

import os

import grpc
import pytest
from gateway_helpers import GatewayHarness, file_entry
from strongroom.gateway.v1 import manifest_pb2
from strongroom_platform.manifest import decode_manifest, encode_manifest


async def _read(gw: GatewayHarness, point_id: str) -> tuple[bytes, int]:
    request = manifest_pb2.ReadPointManifestRequest(point_id=point_id)
    pieces = [r.data async for r in gw.manifest_stub.ReadPointManifest(request)]
    return b"".join(pieces), len(pieces)


async def _point(gw: GatewayHarness, names: list[str]) -> str:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    key = await gw.key_of("acct-a")
    await gw.upload(agent, "job-1", [b"content"])
    return (await gw.commit(agent, "job-1", [file_entry(n, key, [b"content"]) for n in names])).point_id


async def test_serves_the_decrypted_manifest_of_a_point(gw: GatewayHarness) -> None:
    point_id = await _point(gw, ["b.txt", "a.txt"])
    data, _ = await _read(gw, point_id)
    assert data[:5] == b"SRMF\x01"
    assert [e.path for e in decode_manifest(data)] == ["a.txt", "b.txt"]
    # Stored as format version 2 (segments, the default): served as the version 1 stream it stores.
    assert (await gw.stored_manifest("acct-a", point_id))[:5] == b"SRMF\x02"
    assert data == await gw.point_manifest(point_id)


async def test_large_manifests_are_streamed_in_pieces(gw: GatewayHarness) -> None:
    # Random names do not compress: well over the 1 MiB piece size.
    names = sorted(os.urandom(60).hex() for _ in range(30_000))
    point_id = await _point(gw, names)
    data, pieces = await _read(gw, point_id)
    assert pieces >= 2
    assert [e.path for e in decode_manifest(data)] == names


async def test_manifests_written_before_encryption_are_served_as_stored(gw: GatewayHarness) -> None:
    point_id = await _point(gw, ["x"])
    plaintext = encode_manifest([file_entry("legacy", b"k" * 32, [b"c"])])
    key = f"manifests/acct-a/{point_id}"
    gw.objects.damage(key, plaintext)
    assert (await _read(gw, point_id))[0] == plaintext


async def test_unknown_point_is_not_found_and_a_tampered_manifest_a_failed_precondition(gw: GatewayHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _read(gw, "no-such-point")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    point_id = await _point(gw, ["x"])
    key = f"manifests/acct-a/{point_id}"
    sealed = await gw.objects.get(key)
    gw.objects.damage(key, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _read(gw, point_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "authentication failed" in (err.value.details() or "")
    gw.objects.damage(key, b"SRME\x07" + sealed[5:])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _read(gw, point_id)
    assert "unsupported sealed manifest version 7" in (err.value.details() or "")
