"""Manifest format version 2: the segment list, and the version 1 stream rebuilt from segment contents."""

from __future__ import annotations

import hashlib

import pytest
import zstandard
from strongroom.common.v1 import common_pb2
from strongroom_platform.manifest import (
    MAGIC,
    ManifestFormatError,
    SegmentRef,
    decode_manifest,
    decode_segment_list,
    encode_manifest,
    encode_segment_list,
    encode_uvarint,
    manifest_from_segments,
    manifest_version,
)


def entry(path: str, size: int = 0) -> common_pb2.FileEntry:
    return common_pb2.FileEntry(path=path, type=common_pb2.ENTRY_TYPE_FILE, size=size)


def segment(paths: list[str]) -> tuple[SegmentRef, bytes]:
    """A segment of ``paths`` (its id here is a plain hash: the platform does not compute ids)."""
    content = b"".join(encode_uvarint(len(r)) + r for r in (entry(p, len(p)).SerializeToString() for p in paths))
    return SegmentRef(hashlib.sha256(content).digest(), len(paths), len(content), paths[0].encode()), content


def test_segment_list_round_trips_and_rebuilds_the_version_1_stream() -> None:
    parts = [segment(["", "a", "a/b"]), segment(["a/c"]), segment(["b" * 300, "c"])]
    refs = [ref for ref, _ in parts]
    data = encode_segment_list(refs)
    assert data[:5] == MAGIC + b"\x02"
    assert manifest_version(data) == 2
    assert decode_segment_list(data) == refs
    rebuilt = manifest_from_segments(refs, [content for _, content in parts])
    assert manifest_version(rebuilt) == 1
    expected = ["", "a", "a/b", "a/c", "b" * 300, "c"]
    assert list(decode_manifest(rebuilt)) == [entry(p, len(p)) for p in expected]
    assert [e.path for e in decode_manifest(rebuilt)] == expected


def test_an_empty_point_lists_no_segments() -> None:
    data = encode_segment_list([])
    assert decode_segment_list(data) == []
    assert list(decode_manifest(manifest_from_segments([], []))) == []


def test_the_record_stream_decoder_refuses_a_segment_list_clearly() -> None:
    with pytest.raises(ManifestFormatError, match="version 2 lists segments"):
        list(decode_manifest(encode_segment_list([segment(["a"])[0]])))


def test_version_3_and_bad_magic_are_refused() -> None:
    with pytest.raises(ManifestFormatError, match="unsupported manifest format version 3 .*upgrade"):
        manifest_version(MAGIC + b"\x03" + bytes(10))
    with pytest.raises(ManifestFormatError, match="bad magic"):
        manifest_version(b"SRXX\x02")
    with pytest.raises(ManifestFormatError, match="version 1 does not list segments"):
        decode_segment_list(encode_manifest([entry("a")]))


@pytest.mark.parametrize(
    "damage",
    [
        "length",  # the blob holds other bytes than listed
        "count",  # the list claims another number of records
        "first_path",  # the segment starts elsewhere than listed
        "order",  # two segments out of path order
    ],
)
def test_segments_that_do_not_match_their_list_entry_are_refused(damage: str) -> None:
    (first, first_content), (second, second_content) = segment(["a", "b"]), segment(["c"])
    if damage == "length":
        first = first._replace(byte_length=first.byte_length + 1)
    elif damage == "count":
        first = first._replace(entry_count=3)
    elif damage == "first_path":
        second = second._replace(first_path=b"bb")
    else:
        first, first_content, second, second_content = second, second_content, first, first_content
    with pytest.raises(ManifestFormatError, match="segment"):
        manifest_from_segments([first, second], [first_content, second_content])


def test_a_corrupt_segment_list_is_refused() -> None:
    ref, _ = segment(["a"])
    data = encode_segment_list([ref])
    body = zstandard.ZstdDecompressor().decompress(data[5:])
    for broken in (body[:20], body[:-1], body + body):
        with pytest.raises(ManifestFormatError, match="segment list"):
            decode_segment_list(MAGIC + b"\x02" + zstandard.ZstdCompressor().compress(broken))
    with pytest.raises(ManifestFormatError, match="corrupt segment list"):
        decode_segment_list(MAGIC + b"\x02" + b"not zstd")
    for broken_frame in (data[:-3], data + b"x"):
        with pytest.raises(ManifestFormatError, match="corrupt segment list"):
            decode_segment_list(broken_frame)
