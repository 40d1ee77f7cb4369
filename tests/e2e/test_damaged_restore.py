"""Issue 9 ("Damage") on the real stack: bytes flipped in one stored pack fail only the files that use them.

The services run with the filesystem object store (Object Lock makes the S3 version
immutable through S3; the bytes are corrupted where they live, in the pinned version's
file, as a failing disk would) and 1 MiB packs. Files of 40-250 KiB are one chunk
each (below the chunker's minimum), with distinct sizes, so the gateway's chunk rows
map every stored blob to its file by raw length.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import asyncpg
import pytest
from strongroom.common.v1 import common_pb2
from strongroom_platform.objectstore_fs import key_to_parts
from strongroom_testing.fixtures import PgLogins
from test_backup_restore import (
    assert_same_file,
    backup,
    enrolled_instance,
    restore,
    running_platform,
    versions_with_points,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

FILES = 60


def make_files(root: Path) -> dict[int, list[str]]:
    """Single-chunk files of distinct sizes (one a copy of another), an empty file and a symlink; paths by size."""
    rng = random.Random(9)
    by_size: dict[int, list[str]] = {}
    sizes = rng.sample(range(40_000, 250_000), FILES)
    for n, size in enumerate(sizes):
        path = f"d{n % 4}/file-{n:02}.bin"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(rng.randbytes(size))
        by_size.setdefault(size, []).append(path)
    (root / "copy").mkdir()
    shutil.copy2(root / by_size[sizes[7]][0], root / "copy/same-as-7.bin")  # shares its only chunk
    by_size[sizes[7]].append("copy/same-as-7.bin")
    (root / "empty.txt").write_bytes(b"")
    os.symlink("d0/file-00.bin", root / "link")
    return by_size


def version_file(store: Path, key: str, version_id: str) -> Path:
    """Where the filesystem object store keeps ``version_id`` of ``key`` (ADR 0025)."""
    parts = key_to_parts(key)
    directory = store.joinpath(*(p + ".d" for p in parts[:-1]))
    return directory / f"{parts[-1]}.versions" / f"{version_id}.obj"


async def test_a_damaged_pack_fails_only_the_files_in_it(
    stack_kafka: str, pg_logins: PgLogins, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "objects"
    settings = {"STRONGROOM_OBJECT_STORE": f"file:{store}", "STRONGROOM_GATEWAY_PACK_BYTES": str(1 << 20)}
    source = tmp_path / "source"
    by_size = make_files(source)
    async with running_platform(stack_kafka, pg_logins, tmp_path, settings) as platform:
        instance_id, agent = await enrolled_instance(platform, source, tmp_path / "agent-state")
        try:
            await backup(platform, instance_id)
            [version] = await versions_with_points(platform, instance_id, 1)
            [point] = version.points

            conn = await asyncpg.connect(pg_logins.owner)
            try:
                rows = await conn.fetch(
                    'SELECT c.chunk_id, c."offset", c.length, c.raw_length, p.object_key, p.version_id'
                    " FROM gateway.chunks c JOIN gateway.packs p USING (pack_id)"
                )
            finally:
                await conn.close()
            packs = {(r["object_key"], r["version_id"]) for r in rows}
            assert len(packs) >= 5, len(packs)  # the tree really spans several packs
            # The pack holding the shared chunk: one byte flipped in it and in one more blob of that pack.
            [shared] = [r for r in rows if len(by_size.get(r["raw_length"], [])) == 2]
            same_pack = [r for r in rows if r["object_key"] == shared["object_key"] and r["raw_length"] in by_size]
            targets = [shared, next(r for r in same_pack if r is not shared and r["chunk_id"] != shared["chunk_id"])]
            path = version_file(store, shared["object_key"], shared["version_id"])
            os.chmod(path, 0o600)
            with path.open("r+b") as pack:
                for row in targets:
                    pack.seek(row["offset"] + row["length"] // 2)
                    byte = pack.read(1)
                    pack.seek(-1, os.SEEK_CUR)
                    pack.write(bytes([byte[0] ^ 0x01]))
            damaged = sorted(p for row in targets for p in by_size[row["raw_length"]])

            target = tmp_path / "restored"
            job = await restore(platform, point.point_id, [], target, expect=common_pb2.JOB_STATUS_PARTIAL_COMPLETE)
        finally:
            await agent.stop()

    failed = {f.path: f.reason for f in job.failed_files}
    assert sorted(failed) == damaged
    by_chunk = {row["raw_length"]: row["chunk_id"].hex() for row in targets}
    for size, chunk in by_chunk.items():
        for damaged_path in by_size[size]:
            assert failed[damaged_path] == f"chunk {chunk} of this file is damaged in storage (authentication failed)"
    assert job.stats.files_failed == len(damaged)
    originals = [p for p in source.rglob("*") if p.is_file() or p.is_symlink()]
    restored_ok = 0
    for original in originals:
        relative = original.relative_to(source).as_posix()
        copy = target / relative
        if relative in failed:
            assert not copy.exists() and not copy.is_symlink(), relative  # never present with wrong content
            continue
        if original.is_symlink():
            assert os.readlink(copy) == os.readlink(original)
        else:
            assert_same_file(original, copy)
        restored_ok += 1
    assert job.stats.files_restored == restored_ok == len(originals) - len(damaged)
    assert not list(target.rglob(".strongroom*"))
    with capsys.disabled():
        print(
            f"\ndamaged restore: {len(packs)} packs, {len(originals)} files and links;"
            f" restored {job.stats.files_restored} byte-identical, failed {sorted(failed)}"
        )
