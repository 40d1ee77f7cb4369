"""Synthesized points: the base manifest merged with the agent's changes, in bounded memory."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import Future

import grpc
import pytest
from gateway_helpers import AGENT_VERSION, Agent, GatewayHarness, aiter_of, dir_entry, file_entry
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_gateway.errors import FailedPrecondition, InvalidArgument
from strongroom_gateway.synthesis import SortedSpool, build_manifest, merge_entries
from strongroom_platform.manifest import decode_manifest

HELLO = gateway_pb2.AgentReport(
    hello=gateway_pb2.AgentHello(
        agent_version=AGENT_VERSION, filesystems=[common_pb2.Filesystem(mount_point="/", capacity_bytes=1 << 30)]
    )
)


def test_sorted_spool_sorts_across_runs_on_disk() -> None:
    keys = [f"k{i:06}".encode() for i in range(20_000)]
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    spool = SortedSpool(run_bytes=64 << 10)
    for key in shuffled:
        spool.add(key, key[::-1])
    assert spool.runs > 10  # memory held one run at a time
    assert list(spool.sorted()) == [(k, k[::-1]) for k in keys]
    spool.close()


def entry(path: str, size: int = 0) -> common_pb2.FileEntry:
    return common_pb2.FileEntry(path=path, type=common_pb2.ENTRY_TYPE_FILE, size=size)


def changes(*items: common_pb2.FileEntry) -> list[tuple[bytes, bytes]]:
    return [(e.path.encode(), e.SerializeToString()) for e in items]


def deletes(*paths: str) -> list[tuple[bytes, bytes]]:
    return [(p.encode(), b"") for p in paths]


def test_merge_replaces_adds_and_deletes() -> None:
    base = [entry(""), entry("a", 1), entry("b", 2), entry("b/x", 3), entry("c", 4)]
    merged = list(merge_entries(base, changes(entry("a-new", 9), entry("b", 20), entry("d", 5)), deletes("b/x", "zz")))
    assert [(e.path, e.size) for e in merged] == [("", 0), ("a", 1), ("a-new", 9), ("b", 20), ("c", 4), ("d", 5)]
    # No base: the changes are the point.
    assert [e.path for e in merge_entries([], changes(entry("x"), entry("y")), [])] == ["x", "y"]
    # Everything deleted.
    assert list(merge_entries(base, [], deletes("", "a", "b", "b/x", "c"))) == []


def test_merge_refuses_contradictions() -> None:
    with pytest.raises(InvalidArgument, match="both sent and deleted"):
        list(merge_entries([entry("a")], changes(entry("a")), deletes("a")))
    with pytest.raises(InvalidArgument, match="duplicate"):
        list(merge_entries([], changes(entry("a"), entry("a")), []))


async def _running_backup(gw: GatewayHarness, instance: str, account: str, job_id: str) -> Agent:
    agent = await gw.enrolled_agent(instance, account)
    await gw.request_backup(agent, job_id)
    call = gw.stub.Connect(metadata=agent.md)
    await call.write(HELLO)
    command = (await asyncio.wait_for(call.read(), 5)).run_backup
    assert command.job_id == job_id and command.accepts_base_point
    call.cancel()
    return agent


async def _commit(
    gw: GatewayHarness,
    agent: Agent,
    job_id: str,
    entries: list[common_pb2.FileEntry],
    *,
    base: str = "",
    deleted: list[str] | None = None,
    count: int = 0,
    mount_point: str = "/",
) -> gateway_pb2.CommitPointResponse:
    header = gateway_pb2.PointHeader(
        job_id=job_id,
        filesystem=common_pb2.Filesystem(mount_point=mount_point, capacity_bytes=1 << 30),
        base_point_id=base,
        entry_count=count,
    )
    # Two batches, the second one out of order: the gateway sorts.
    half = len(entries) // 2
    batches = [
        gateway_pb2.CommitPointRequest(entries=gateway_pb2.EntryBatch(entries=entries[half:])),
        gateway_pb2.CommitPointRequest(
            entries=gateway_pb2.EntryBatch(entries=entries[:half], deleted_paths=deleted or [])
        ),
    ]
    requests = [gateway_pb2.CommitPointRequest(header=header), *batches]
    return await gw.stub.CommitPoint(aiter_of(requests), metadata=agent.md)


async def _paths(gw: GatewayHarness, account: str, point_id: str) -> list[tuple[str, int]]:
    return [(e.path, e.size) for e in decode_manifest(await gw.point_manifest(point_id))]


async def test_a_point_is_synthesized_from_its_base_and_stands_alone(gw: GatewayHarness) -> None:
    agent = await _running_backup(gw, "i-1", "acct-a", "job-1")
    key = await gw.key_of("acct-a")
    await gw.upload(agent, "job-1", [b"one", b"two", b"three", b"four!"])
    base = await _commit(
        gw,
        agent,
        "job-1",
        [dir_entry(""), dir_entry("etc"), file_entry("etc/a", key, [b"one"]), file_entry("etc/b", key, [b"two"])],
    )
    await gw.request_backup(agent, "job-2")
    second = await _commit(
        gw,
        agent,
        "job-2",
        [file_entry("etc/b", key, [b"three"]), file_entry("new", key, [b"four!"])],
        base=base.point_id,
        deleted=["etc/a"],
        count=4,
    )
    assert (second.file_count, second.total_bytes) == (2, 10)
    assert await _paths(gw, "acct-a", second.point_id) == [("", 0), ("etc", 0), ("etc/b", 5), ("new", 5)]
    # The base is untouched.
    assert await _paths(gw, "acct-a", base.point_id) == [("", 0), ("etc", 0), ("etc/a", 3), ("etc/b", 3)]
    # An unchanged tree: nothing sent, the same point again.
    await gw.request_backup(agent, "job-3")
    third = await _commit(gw, agent, "job-3", [], base=second.point_id, count=4)
    assert await _paths(gw, "acct-a", third.point_id) == await _paths(gw, "acct-a", second.point_id)
    # ... whose manifest is the base's, byte for byte (not encoded again), under its own seal.
    assert await gw.stored_manifest("acct-a", third.point_id) == await gw.stored_manifest("acct-a", second.point_id)
    assert (third.file_count, third.total_bytes) == (2, 10)
    await gw.request_backup(agent, "job-4")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _commit(gw, agent, "job-4", [], base=third.point_id, count=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_foreign_unknown_or_miscounted_bases_are_refused(gw: GatewayHarness) -> None:
    alice = await _running_backup(gw, "i-1", "acct-a", "job-1")
    key = await gw.key_of("acct-a")
    await gw.upload(alice, "job-1", [b"x"])
    base = await _commit(gw, alice, "job-1", [dir_entry(""), file_entry("x", key, [b"x"])])
    other_instance = await _running_backup(gw, "i-2", "acct-a", "job-2")
    bob = await _running_backup(gw, "i-3", "acct-b", "job-3")
    await gw.request_backup(alice, "job-4")
    cases = [
        (other_instance, "job-2", base.point_id, "/", 2, "not a point of this instance"),
        (bob, "job-3", base.point_id, "/", 2, "not a point of this instance"),
        (alice, "job-4", "no-such-point", "/", 2, "not a point of this instance"),
        (alice, "job-4", base.point_id, "/data", 2, "is of '/'"),
        (alice, "job-4", base.point_id, "/", 3, "has 2 entries, the agent counted 3"),
    ]
    for agent, job, base_id, mount, count, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _commit(gw, agent, job, [], base=base_id, count=count, mount_point=mount)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, message
        assert message in (err.value.details() or "")
    # Deleted paths without a base make no sense.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _commit(gw, alice, "job-4", [dir_entry("")], deleted=["x"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # After the refusals the agent sends the full point.
    full = await _commit(gw, alice, "job-4", [dir_entry(""), file_entry("x", key, [b"x"])])
    assert await _paths(gw, "acct-a", full.point_id) == [("", 0), ("x", 1)]


async def test_a_base_whose_manifest_is_gone_is_refused(gw: GatewayHarness) -> None:
    agent = await _running_backup(gw, "i-1", "acct-a", "job-1")
    base = await _commit(gw, agent, "job-1", [dir_entry("")])
    gw.objects._versions.pop(f"manifests/acct-a/{base.point_id}")  # every version lost
    await gw.request_backup(agent, "job-2")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _commit(gw, agent, "job-2", [], base=base.point_id, count=1)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot be read" in (err.value.details() or "")


async def test_a_synthesized_point_still_needs_every_chunk(gw: GatewayHarness) -> None:
    agent = await _running_backup(gw, "i-1", "acct-a", "job-1")
    key = await gw.key_of("acct-a")
    base = await _commit(gw, agent, "job-1", [dir_entry("")])
    await gw.request_backup(agent, "job-2")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _commit(gw, agent, "job-2", [file_entry("f", key, [b"never uploaded"])], base=base.point_id, count=2)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not stored" in (err.value.details() or "")


async def test_unthrottled_gateway_delivers_backups_without_limits(gw: GatewayHarness) -> None:
    from strongroom_gateway.agents import authenticate, pending_commands
    from strongroom_gateway.sessions import SessionRegistry

    agent = await gw.enrolled_agent("i-1", "acct-a")
    await gw.request_backup(agent, "job-1")
    identity = await authenticate(f"Bearer {agent.instance_id}.{agent.credential}", store=gw.store)
    registry = SessionRegistry()
    limited = await pending_commands(identity, registry.open("i-1"), store=gw.store)
    free = await pending_commands(identity, registry.open("i-1"), store=gw.store, unthrottled=True)
    assert [c.run_backup.max_read_bytes_per_second for _, c in limited] == [10_000_000]
    assert [(c.run_backup.max_read_bytes_per_second, c.run_backup.max_cores) for _, c in free] == [(0, 1024)]


class _LateAnswer(Future[tuple[dict[str, int], list[bytes]]]):
    """A lookup answered only when its result is asked for (so the test sees how many are open)."""

    def __init__(self, answer: tuple[dict[str, int], list[bytes]]) -> None:
        super().__init__()
        self._answer = answer

    def result(self, timeout: float | None = None) -> tuple[dict[str, int], list[bytes]]:
        if not self.done():
            self.set_result(self._answer)
        return super().result(timeout)


def test_build_manifest_keeps_lookups_in_flight_and_checks_every_one() -> None:
    entries = [
        common_pb2.FileEntry(path=f"f{i:03d}", type=common_pb2.ENTRY_TYPE_FILE, size=1, chunk_ids=[bytes([i]) * 32])
        for i in range(10)
    ]
    started: list[_LateAnswer] = []
    most_open = 0
    lost = b""

    def locate(counts: dict[bytes, int]) -> Future[tuple[dict[str, int], list[bytes]]]:
        nonlocal most_open
        most_open = max(most_open, sum(1 for f in started if not f.done()) + 1)
        ids = list(counts)
        started.append(_LateAnswer(({f"pack-{ids[0][0]}": sum(counts.values())}, [c for c in ids if c == lost])))
        return started[-1]

    built = build_manifest(iter(entries), locate, lookup_batch=3, lookups_in_flight=2)
    assert most_open == 2 and len(started) == 4 and all(f.done() for f in started)
    assert built.packs == {"pack-0", "pack-3", "pack-6", "pack-9"} and built.file_count == 10
    assert built.refs == {"pack-0": 3, "pack-3": 3, "pack-6": 3, "pack-9": 1}
    lost, started, most_open = bytes([7]) * 32, [], 0
    with pytest.raises(FailedPrecondition, match="1 referenced chunks are not stored"):
        build_manifest(iter(entries), locate, lookup_batch=3, lookups_in_flight=2)
