"""Pack format: round trip, encryption, integrity, refusal of unknown versions and damaged structure."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from strongroom_gateway import packfile
from strongroom_gateway.crypto import NONCE_SIZE, OVERHEAD, DataKey
from strongroom_gateway.packfile import BlobToPack, PackFormatError, decode_index, encode_pack, open_blob

KEY = DataKey("acct-a", bytes(range(32)))


def _blobs() -> list[BlobToPack]:
    return [
        BlobToPack(bytes([1]) * 32, packfile.COMPRESSION_ZSTD, b"compressed-bytes", 100),
        BlobToPack(bytes([2]) * 32, packfile.COMPRESSION_NONE, b"raw content here", 16),
        BlobToPack(bytes([3]) * 32, packfile.COMPRESSION_NONE, b"", 0),
    ]


def _open(data: bytes, entry: packfile.PackEntry, key: DataKey = KEY) -> bytes:
    stored = data[entry.offset : entry.offset + entry.length]
    return open_blob(key, 2, entry.chunk_id, entry.compression, entry.raw_length, stored)


def test_round_trip_locates_and_opens_every_blob() -> None:
    blobs = _blobs()
    pack = encode_pack(blobs, KEY)
    entries = decode_index(pack.data, KEY)
    assert list(entries) == list(pack.entries)
    for blob, entry in zip(blobs, entries, strict=True):
        assert entry.chunk_id == blob.chunk_id
        assert entry.compression == blob.compression
        assert entry.raw_length == blob.raw_length
        assert entry.length == len(blob.payload) + OVERHEAD
        assert _open(pack.data, entry) == blob.payload


def test_payloads_and_index_are_not_stored_in_the_clear() -> None:
    secret = b"a file name and its content that must not be readable in the bucket"
    pack = encode_pack([BlobToPack(bytes([7]) * 32, packfile.COMPRESSION_NONE, secret, len(secret))], KEY)
    assert secret not in pack.data
    assert bytes([7]) * 32 not in pack.data  # chunk ids (and so chunk sizes) are inside the sealed index
    # Two encodings of the same blobs differ: fresh nonces every time.
    assert encode_pack(_blobs(), KEY).data != encode_pack(_blobs(), KEY).data


def test_layout_header_and_trailer_are_as_documented() -> None:
    pack = encode_pack(_blobs(), KEY)
    assert pack.data[:5] == b"SRPK\x02"
    assert pack.data[-4:] == b"SRPE"
    index_length = struct.unpack("<I", pack.data[-8:-4])[0]
    assert index_length == 5 + OVERHEAD + 4 + 3 * 49
    index = pack.data[-8 - index_length : -8]
    assert index[:5] == b"SRPX\x02"
    assert pack.entries[0].offset == 5
    assert pack.entries[1].offset == 5 + len(b"compressed-bytes") + OVERHEAD


def test_pack_id_is_sha256_of_the_object() -> None:
    pack = encode_pack(_blobs(), KEY)
    assert pack.pack_id == hashlib.sha256(pack.data).hexdigest()


def test_unknown_header_version_is_refused() -> None:
    data = bytearray(encode_pack(_blobs(), KEY).data)
    data[4] = 3
    with pytest.raises(PackFormatError, match="unsupported pack format version 3"):
        decode_index(bytes(data), KEY)


def test_unknown_index_version_is_refused() -> None:
    pack = encode_pack(_blobs(), KEY)
    data = bytearray(pack.data)
    index_length = struct.unpack("<I", data[-8:-4])[0]
    data[len(data) - 8 - index_length + 4] = 9
    with pytest.raises(PackFormatError, match="unsupported pack index version 9"):
        decode_index(bytes(data), KEY)


def test_blob_of_an_unknown_pack_version_is_refused() -> None:
    with pytest.raises(PackFormatError, match="unsupported pack format version 7"):
        open_blob(KEY, 7, bytes(32), 0, 0, b"")


def test_encrypted_pack_needs_the_key() -> None:
    with pytest.raises(PackFormatError, match="encrypted and no data key"):
        decode_index(encode_pack(_blobs(), KEY).data)


def test_index_of_another_account_does_not_open() -> None:
    other = DataKey("acct-b", bytes(range(32)))  # same key bytes, other account: the AAD differs
    with pytest.raises(PackFormatError, match="pack index: authentication failed"):
        decode_index(encode_pack(_blobs(), KEY).data, other)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"XXXX" + d[4:], "bad header magic"),
        (lambda d: d[:-4] + b"NOPE", "bad pack trailer magic"),
        (lambda d: d[:-8] + struct.pack("<I", len(d)) + d[-4:], "index length out of range"),
        (lambda d: d[:3], "bad header magic|too short|unsupported"),
        (lambda d: d[:-20] + bytes([d[-20] ^ 1]) + d[-19:], "pack index: authentication failed"),
    ],
)
def test_damaged_packs_are_refused(mutate: object, message: str) -> None:
    data = encode_pack(_blobs(), KEY).data
    with pytest.raises(PackFormatError, match=message):
        decode_index(mutate(data), KEY)  # type: ignore[operator]


def test_flipped_blob_byte_fails_authentication() -> None:
    pack = encode_pack(_blobs(), KEY)
    entry = pack.entries[1]
    data = bytearray(pack.data)
    data[entry.offset + 20] ^= 0x01
    with pytest.raises(PackFormatError, match="authentication failed"):
        _open(bytes(data), entry)


def test_blob_read_under_another_chunk_id_or_compression_fails() -> None:
    pack = encode_pack(_blobs(), KEY)
    entry = pack.entries[1]
    stored = pack.data[entry.offset : entry.offset + entry.length]
    with pytest.raises(PackFormatError, match="authentication failed"):
        open_blob(KEY, 2, bytes([9]) * 32, entry.compression, entry.raw_length, stored)
    with pytest.raises(PackFormatError, match="authentication failed"):
        open_blob(KEY, 2, entry.chunk_id, packfile.COMPRESSION_ZSTD, entry.raw_length, stored)
    with pytest.raises(PackFormatError, match="authentication failed"):
        open_blob(KEY, 2, entry.chunk_id, entry.compression, entry.raw_length + 1, stored)


def test_empty_pack_round_trips() -> None:
    assert decode_index(encode_pack([], KEY).data, KEY) == []


def test_one_random_draw_per_pack_and_every_nonce_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    """All nonces of a pack come from one os.urandom call (ADR 0079) and no two seals of it share one."""
    draws: list[int] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        draws.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", urandom)
    blobs = [BlobToPack(bytes([i]) * 32, packfile.COMPRESSION_NONE, bytes([i]) * 100, 100) for i in range(50)]
    pack = encode_pack(blobs, KEY)
    monkeypatch.undo()
    assert draws == [NONCE_SIZE * 51]
    index_length = struct.unpack("<I", pack.data[-8:-4])[0]
    index_nonce = pack.data[-8 - index_length + 5 :][:NONCE_SIZE]
    nonces = [pack.data[e.offset : e.offset + NONCE_SIZE] for e in pack.entries] + [index_nonce]
    assert len(set(nonces)) == 51
    for blob, entry in zip(blobs, decode_index(pack.data, KEY), strict=True):
        assert _open(pack.data, entry) == blob.payload


def test_seal_into_refuses_a_nonce_of_the_wrong_size() -> None:
    out = memoryview(bytearray(10 + OVERHEAD))
    with pytest.raises(ValueError, match="nonces are 12 bytes"):
        KEY.seal_into(b"0123456789", b"aad", out, b"short")
