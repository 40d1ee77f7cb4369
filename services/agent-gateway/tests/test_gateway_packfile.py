"""Pack format: round trip, integrity, refusal of unknown versions and damaged structure."""

from __future__ import annotations

import hashlib
import struct

import pytest
from strongroom_gateway import packfile
from strongroom_gateway.packfile import BlobToPack, PackFormatError, decode_index, encode_pack


def _blobs() -> list[BlobToPack]:
    return [
        BlobToPack(bytes([1]) * 32, packfile.COMPRESSION_ZSTD, b"compressed-bytes", 100),
        BlobToPack(bytes([2]) * 32, packfile.COMPRESSION_NONE, b"raw content here", 16),
        BlobToPack(bytes([3]) * 32, packfile.COMPRESSION_NONE, b"", 0),
    ]


def test_round_trip_locates_every_blob() -> None:
    blobs = _blobs()
    pack = encode_pack(blobs)
    entries = decode_index(pack.data)
    assert list(entries) == list(pack.entries)
    for blob, entry in zip(blobs, entries, strict=True):
        assert entry.chunk_id == blob.chunk_id
        assert entry.compression == blob.compression
        assert entry.raw_length == blob.raw_length
        assert pack.data[entry.offset : entry.offset + entry.length] == blob.payload


def test_layout_header_and_trailer_are_as_documented() -> None:
    pack = encode_pack(_blobs())
    assert pack.data[:5] == b"SRPK\x01"
    assert pack.data[-4:] == b"SRPE"
    index_length = struct.unpack("<I", pack.data[-8:-4])[0]
    assert index_length == 9 + 3 * 49
    index = pack.data[-8 - index_length : -8]
    assert index[:5] == b"SRPX\x01"
    assert struct.unpack("<I", index[5:9])[0] == 3
    assert pack.entries[0].offset == 5


def test_pack_id_is_sha256_of_the_object() -> None:
    pack = encode_pack(_blobs())
    assert pack.pack_id == hashlib.sha256(pack.data).hexdigest()


def test_unknown_header_version_is_refused() -> None:
    data = bytearray(encode_pack(_blobs()).data)
    data[4] = 2
    with pytest.raises(PackFormatError, match="unsupported pack format version 2"):
        decode_index(bytes(data))


def test_unknown_index_version_is_refused() -> None:
    pack = encode_pack(_blobs())
    data = bytearray(pack.data)
    index_length = struct.unpack("<I", data[-8:-4])[0]
    data[len(data) - 8 - index_length + 4] = 9
    with pytest.raises(PackFormatError, match="unsupported pack index version 9"):
        decode_index(bytes(data))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"XXXX" + d[4:], "bad header magic"),
        (lambda d: d[:-4] + b"NOPE", "bad pack trailer magic"),
        (lambda d: d[:-8] + struct.pack("<I", len(d)) + d[-4:], "index length out of range"),
        (lambda d: d[:3], "bad header magic|too short|unsupported"),
    ],
)
def test_damaged_packs_are_refused(mutate: object, message: str) -> None:
    data = encode_pack(_blobs()).data
    with pytest.raises(PackFormatError, match=message):
        decode_index(mutate(data))  # type: ignore[operator]


def test_entry_pointing_outside_the_blobs_is_refused() -> None:
    pack = encode_pack(_blobs())
    data = bytearray(pack.data)
    index_length = struct.unpack("<I", data[-8:-4])[0]
    first_entry = len(data) - 8 - index_length + 9
    # offset field of the first entry (after 32-byte id and 1-byte compression)
    struct.pack_into("<Q", data, first_entry + 33, len(data))
    with pytest.raises(PackFormatError, match="out of the blob section"):
        decode_index(bytes(data))


def test_empty_pack_round_trips() -> None:
    assert decode_index(encode_pack([]).data) == []
