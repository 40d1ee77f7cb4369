"""``segments.write_segments``: the references it returns name the pack each segment is recorded in.

The pack writer reports where it recorded each written segment, so ``write_segments`` does not look
the written ones up again; a segment another replica recorded first is referenced in that replica's
pack, the one the chunk table names.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from gateway_helpers import GatewayHarness, dir_entry, file_entry
from strongroom_gateway import segments
from strongroom_gateway.ingest import PackWriter
from strongroom_platform.manifest import encode_manifest

ACCOUNT = "acct-a"


async def _manifest(gw: GatewayHarness, files: int) -> bytes:
    key = await gw.key_of(ACCOUNT)
    entries = [dir_entry("")] + [file_entry(f"f{i:04}", key, [f"content {i}".encode()]) for i in range(files)]
    return encode_manifest(entries)


async def _recorded(gw: GatewayHarness, segment_ids: Sequence[bytes]) -> dict[str, int]:
    """One reference per distinct segment in the pack the chunk table names (what the point must hold)."""
    async with gw.store.transaction() as tx:
        refs, missing = await tx.chunk_pack_refs(ACCOUNT, dict.fromkeys(segment_ids, 1))
    assert not missing
    return refs


async def test_the_references_name_the_packs_the_segments_were_written_to(gw: GatewayHarness) -> None:
    await gw.enrolled_agent("i-1")
    key = await gw.key_of(ACCOUNT)
    # A small pack target: the segments spread over several packs, so a reference in the wrong one shows.
    writer = PackWriter(gw.store, gw.objects, gw.clock, keys=gw.keys, target_bytes=2_000)
    try:
        first = await segments.write_segments(gw.store, writer, ACCOUNT, key, await _manifest(gw, 300))
        assert first.written == len(first.segment_ids) >= 5
        assert len(first.refs) >= 3
        assert first.refs == await _recorded(gw, first.segment_ids)
        assert sum(first.refs.values()) == len(first.segment_ids)
        # A second manifest sharing most segments writes only the new ones; held and written alike are referenced.
        second = await segments.write_segments(gw.store, writer, ACCOUNT, key, await _manifest(gw, 330))
        assert 0 < second.written < len(second.segment_ids)
        assert second.refs == await _recorded(gw, second.segment_ids)
    finally:
        await writer.close()


async def test_a_segment_another_replica_recorded_first_is_referenced_in_its_pack(
    gw: GatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await gw.enrolled_agent("i-1")
    key = await gw.key_of(ACCOUNT)
    manifest = await _manifest(gw, 200)
    ours = PackWriter(gw.store, gw.objects, gw.clock, keys=gw.keys)
    theirs = PackWriter(gw.store, gw.objects, gw.clock, keys=gw.keys)
    lookup = segments._pack_refs

    async def then_another_replica_writes(*args: object, **kwargs: object) -> tuple[dict[str, int], list[bytes]]:
        # After our lookup found nothing, another replica writes the same segments and records them first.
        found = await lookup(*args, **kwargs)  # type: ignore[arg-type]
        monkeypatch.setattr(segments, "_pack_refs", lookup)
        await segments.write_segments(gw.store, theirs, ACCOUNT, key, manifest)
        return found

    monkeypatch.setattr(segments, "_pack_refs", then_another_replica_writes)
    try:
        written = await segments.write_segments(gw.store, ours, ACCOUNT, key, manifest)
    finally:
        await ours.close()
        await theirs.close()
    assert written.written == len(written.segment_ids)  # all absent at our lookup, all written again
    packs = {p.pack_id for p in gw.store.state.packs.values()}
    assert len(packs) == 2  # ours and theirs, each with every segment
    # Every reference names the pack the chunk table names (theirs), not the copy we wrote.
    assert written.refs == await _recorded(gw, written.segment_ids)
    assert len(written.refs) == 1
