"""The manifest comparison of ADR 0049 (``tree.diff_points``) against a plain comparison by path."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import zstandard
from catalog_fixtures import DIR, FILE, SYMLINK
from strongroom.common.v1 import common_pb2
from strongroom_catalog.model import REMOVED
from strongroom_catalog.tree import BaseUnreadable, Delta, diff_points
from strongroom_platform.manifest import ManifestFormatError, encode_manifest, encode_uvarint

Row = tuple[str, int, int, int, int, int, int, str]


async def pieces(data: bytes, rng: random.Random) -> AsyncIterator[bytes]:
    offset = 0
    while offset < len(data):
        size = rng.choice((1, 3, 17, 500, 4096, 1 << 20))
        yield data[offset : offset + size]
        offset += size


def tree_of(rng: random.Random, count: int) -> dict[str, common_pb2.FileEntry]:
    entries = {"": common_pb2.FileEntry(path="", type=DIR, mode=0o755)}
    for i in range(count):
        # long names make records of more than 127 bytes (two-byte lengths), many chunks three-byte ones
        name = f"f{i:05d}" + "x" * rng.choice((0, 0, 0, 150))
        path = f"d{i % 7}/{name}"
        entries[f"d{i % 7}"] = common_pb2.FileEntry(path=f"d{i % 7}", type=DIR, mode=0o755)
        chunks = [bytes([i % 256]) * 32] * rng.choice((1, 1, 1, 600))
        kind = rng.choice((FILE, FILE, FILE, SYMLINK))
        entries[path] = common_pb2.FileEntry(
            path=path,
            type=kind,
            mode=0o644,
            size=rng.randrange(1 << 20) if kind == FILE else 0,
            mtime_ns=rng.randrange(1 << 60),
            link_target="t" if kind == SYMLINK else "",
            chunk_ids=chunks if kind == FILE else [],
        )
    return entries


def mutate(rng: random.Random, base: dict[str, common_pb2.FileEntry]) -> dict[str, common_pb2.FileEntry]:
    new = {p: common_pb2.FileEntry.FromString(e.SerializeToString()) for p, e in base.items()}
    for path in rng.sample(sorted(p for p in base if p.count("/") == 1), k=len(base) // 10):
        action = rng.choice(("remove", "size", "mode", "chunks", "mtime"))
        entry = new[path]
        if action == "remove":
            del new[path]
        elif action == "size":
            entry.size += 1
        elif action == "mode":
            entry.mode = 0o600
        elif action == "chunks":  # the content's chunks only: neither browse nor search sees it
            entry.chunk_ids.append(b"\xff" * 32)
        else:
            entry.mtime_ns += 1
    for i in range(len(base) // 20):
        path = f"d{i % 9}/new{i:04d}"
        new.setdefault(f"d{i % 9}", common_pb2.FileEntry(path=f"d{i % 9}", type=DIR, mode=0o755))
        new[path] = common_pb2.FileEntry(path=path, type=FILE, mode=0o644, size=i)
    return new


def manifest(entries: dict[str, common_pb2.FileEntry]) -> bytes:
    return encode_manifest(sorted(entries.values(), key=lambda e: e.path.encode()))


def browse(e: common_pb2.FileEntry) -> tuple[int, int, int, int, int, int, str]:
    return (e.type, e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.link_target)


def expected(base: dict[str, common_pb2.FileEntry], new: dict[str, common_pb2.FileEntry]) -> tuple[set[Row], set[Row]]:
    tree: set[Row] = set()
    found: set[Row] = set()
    for path in (base.keys() | new.keys()) - {""}:
        old, now = base.get(path), new.get(path)
        if now is None:
            tree.add((path, REMOVED, 0, 0, 0, 0, 0, ""))
            found.add((path, REMOVED, 0, 0, 0, 0, 0, ""))
            continue
        if old is None or browse(old) != browse(now):
            tree.add((path, *browse(now)))
        if old is None or (old.type, old.size, old.mtime_ns) != (now.type, now.size, now.mtime_ns):
            found.add((path, now.type, 0, 0, 0, now.size, now.mtime_ns, ""))
    return tree, found


async def run(base: bytes, new: bytes, rng: random.Random) -> tuple[set[Row], set[Row], int]:
    tree: set[Row] = set()
    found: set[Row] = set()

    async def flush(delta: Delta) -> None:
        for c in delta.tree:
            path = f"{c.parent}/{c.name}" if c.parent else c.name
            tree.add((path, c.type, c.mode, c.uid, c.gid, c.size, c.mtime_ns, c.link_target))
        for s in delta.search:
            found.add((s.path, s.type, 0, 0, 0, s.size, s.mtime_ns, ""))
        delta.tree.clear()
        delta.search.clear()

    records = await diff_points(pieces(base, rng), pieces(new, rng), Delta(1, 2), flush)
    return tree, found, records


@pytest.mark.parametrize("seed", range(6))
async def test_the_comparison_finds_exactly_what_changed(seed: int) -> None:
    rng = random.Random(seed)
    base = tree_of(rng, 400)
    new = mutate(rng, base)
    tree, found, records = await run(manifest(base), manifest(new), rng)
    assert (tree, found) == expected(base, new)
    assert records == len(new)


async def test_identical_manifests_have_no_delta_and_empty_ones_too() -> None:
    rng = random.Random(1)
    base = tree_of(rng, 300)
    assert await run(manifest(base), manifest(base), rng) == (set(), set(), len(base))
    assert await run(encode_manifest([]), encode_manifest([]), rng) == (set(), set(), 0)
    everything, _, _ = await run(encode_manifest([]), manifest(base), rng)
    assert len(everything) == len(base) - 1  # the root is not listed


def _unsorted(entries: list[common_pb2.FileEntry]) -> bytes:
    records = b"".join(encode_uvarint(len(e.SerializeToString())) + e.SerializeToString() for e in entries)
    return b"SRMF\x01" + zstandard.ZstdCompressor().compress(records)


async def test_the_new_manifests_errors_are_its_own_and_the_bases_make_a_baseline() -> None:
    rng = random.Random(2)
    base = tree_of(rng, 50)
    data = manifest(base)
    swapped = sorted(base.values(), key=lambda e: e.path.encode())
    swapped[10], swapped[11] = swapped[11], swapped[10]
    swapped[10].size += 1  # decoded, so its order is checked
    swapped[11].size += 1
    with pytest.raises(ManifestFormatError, match="not sorted"):
        await run(data, _unsorted(swapped), rng)
    with pytest.raises(ManifestFormatError):
        await run(data, data[:-7], rng)
    with pytest.raises(BaseUnreadable):
        await run(data[:-7], manifest(mutate(rng, base)), rng)
    with pytest.raises(BaseUnreadable):
        await run(b"NOPE\x01" + data[5:], data, rng)
    bad = dict(base)
    bad["d1/../x"] = common_pb2.FileEntry(path="d1/../x", type=FILE)
    with pytest.raises(ManifestFormatError, match="invalid entry path"):
        await run(data, manifest(bad), rng)
