"""ReadManifest's filter: the same entries as parsing every entry, while reading only what it needs."""

from __future__ import annotations

import itertools

import pytest
import zstandard
from strongroom.common.v1 import common_pb2
from strongroom_gateway.manifests import filter_entries, under
from strongroom_platform import manifest as manifest_format
from strongroom_platform.manifest import decode_manifest, encode_manifest, record_path

PATHS = sorted(
    [
        "",
        "a",
        "a-c",
        "a-c/x",
        "a/b",
        "a/b-1",
        "a/b/c",
        "a/b/c/d.txt",
        "a/b0",
        "a/bb",
        "a0",
        "b",
        "b/a",
        "é",
        "é/ü",
    ],
    key=str.encode,
)


def _entries() -> list[common_pb2.FileEntry]:
    out = []
    for i, path in enumerate(PATHS):
        kind = common_pb2.ENTRY_TYPE_FILE if "." in path or path.endswith(("-1", "0", "x")) else 2
        out.append(common_pb2.FileEntry(path=path, type=kind, size=i, chunk_ids=[bytes([i]) * 32]))
    return out


def _naive(entries: list[common_pb2.FileEntry], include: list[str], exclude: list[str]) -> list[str]:
    return [
        e.path
        for e in entries
        if (not include or any(under(e.path, p) for p in include)) and not any(under(e.path, p) for p in exclude)
    ]


PREFIXES = ["", "a", "a/b", "a/b/c", "a-c", "a/b/c/d.txt", "b", "é", "missing", "a/b0"]


@pytest.mark.parametrize("include", [[], *([p] for p in PREFIXES), ["a/b", "b"], ["b", "a-c"], ["a0", "a"]])
@pytest.mark.parametrize("exclude", [[], ["a/b/c"], ["a"], ["é/ü", "a-c/x"]])
def test_filter_matches_parsing_every_entry(include: list[str], exclude: list[str]) -> None:
    entries = _entries()
    data = encode_manifest(entries)
    got = [e.path for e in filter_entries(data, include, exclude)]
    assert got == _naive(entries, include, exclude)


def test_record_path_reads_the_leading_path_field() -> None:
    entry = common_pb2.FileEntry(path="dir/ä.txt", type=common_pb2.ENTRY_TYPE_FILE, size=5)
    assert record_path(entry.SerializeToString()) == "dir/ä.txt".encode()
    # The point root has an empty path, which protobuf leaves out: the record must be parsed.
    assert record_path(common_pb2.FileEntry(type=2).SerializeToString()) is None
    assert record_path(b"") is None
    assert record_path(b"\x0a\x05ab") is None  # truncated


def test_records_whose_path_is_not_first_are_parsed() -> None:
    """A writer that orders fields otherwise still gets exactly the entries below the include path."""
    entries = _entries()
    # Serialize with the type (field 2) before the path (field 1): valid protobuf, no leading path.
    reordered = []
    for e in entries:
        rest = common_pb2.FileEntry()
        rest.CopyFrom(e)
        rest.ClearField("path")
        head = common_pb2.FileEntry(path=e.path).SerializeToString()
        reordered.append(rest.SerializeToString() + head)
    body = b"".join(manifest_format.encode_uvarint(len(r)) + r for r in reordered)
    data = manifest_format.MAGIC + bytes([manifest_format.VERSION]) + zstandard.ZstdCompressor().compress(body)
    assert [e.path for e in decode_manifest(data)] == PATHS
    for include, exclude in itertools.product([[], ["a/b"], ["é"], ["b"]], [[], ["a/b/c"]]):
        assert [e.path for e in filter_entries(data, include, exclude)] == _naive(entries, include, exclude)


def test_stops_reading_after_the_last_include_range() -> None:
    """Records past every include path's range are not read: a corrupt tail there goes unnoticed."""
    entries = [common_pb2.FileEntry(path=f"d/{i:05d}", type=common_pb2.ENTRY_TYPE_FILE) for i in range(3000)]
    good = b"".join(manifest_format.encode_uvarint(len(r)) + r for r in (e.SerializeToString() for e in entries[:2000]))
    compressor = zstandard.ZstdCompressor().compressobj()
    head = manifest_format.MAGIC + bytes([manifest_format.VERSION])
    truncated = head + compressor.compress(good) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert [e.path for e in filter_entries(truncated, ["d/00010"], [])] == ["d/00010"]
    with pytest.raises(manifest_format.ManifestFormatError):
        filter_entries(truncated, ["d/02999"], [])
