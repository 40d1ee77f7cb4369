"""Full restores only, before and after, with restic and rustic in the same invocation (issue 13, ADR 0060).

    uv run python bench/restore_ab.py [--base REV ...] [--rounds 3] [--peers restic,rustic] [--disk] [--quick]
                                      [--s3-tls] [--pyspy-gil DIR] [--timeline] [--swap-gateway] [--gc-probe]
                                      [--s3-requests]
                                      [--out F]

One stack (the servers and services of ``run.py``), one backup of the day-1 tree per engine, then
``--rounds`` rounds of full restores into tmpfs (and with ``--disk`` onto the data set's disk),
engines interleaved within each round: the agent of ``--base`` (its ``agent/src`` extracted with
``git archive`` and put first on the agent's ``PYTHONPATH``; the services are this checkout's), the
agent of this checkout's HEAD (extracted the same way), then each peer on the same versitygw.
Every restore's wall time, agent and gateway CPU, the agent's peak RSS and the 1-minute load
average are printed; the tables give the medians and this checkout's ratio to each other engine.
``--pyspy-gil DIR`` records one extra, uncounted restore of this checkout's agent and of the gateway
with ``py-spy --gil --native`` (py-spy must be on PATH or next to the interpreter).
``--swap-gateway`` runs each engine's restores with the gateway of the same revision too (its
``services/agent-gateway/src`` extracted the same way; the gateway is restarted on the same
listeners before the agent), so a gateway change is measured the same way as an agent change.
``--gc-probe`` runs the agent and the gateway with ``_gc_probe`` on their path (their cyclic garbage
collector's CPU per generation, ADR 0076) and prints and tabulates each restore's share of it.
Every restore also gives versitygw's bytes read (its files) and written (the responses) and its read and
write system calls (``/proc/<pid>/io``); ``--s3-requests`` adds its GetObject requests, counted in the
access log versitygw writes into the bench's directory (``VGW_ACCESS_LOG``).
``--timeline`` samples every Strongroom restore's agent, gateway and versitygw every 0.25 s
(``restore_timeline.py``: CPU per process and thread group, bytes read and written) and prints
each timeline after the tables (and into ``--out``).
``--variant NAME:KEY=VALUE`` (repeatable; a NAME given again adds to its environment) restores with this
checkout's agent once more per round as ``strongroom[NAME]``, with ``KEY=VALUE`` in its environment, e.g.
``--variant python:STRONGROOM_AGENT_NATIVE=0`` (the same build without its native paths; ADR 0082 measured
a native restore write so).
This checkout's agent carries the native extension built in the checkout (``make native``; ``git archive``
leaves the gitignored library out), so HEAD's native paths are measured; a ``--base`` agent runs without it.
The restored trees are compared with the source by file count after the first round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
import peers  # noqa: E402
from _variants import parse_variants  # noqa: E402
from restore_timeline import Timeline, proc_io  # noqa: E402
from run import count_files, s3_bucket  # noqa: E402
from strongroom_cli.stack import spawn  # noqa: E402
from strongroom_runner import Instance, Result, StrongroomBench, cpu_seconds  # noqa: E402

TMPFS = Path("/dev/shm")


def load() -> float:
    return os.getloadavg()[0]


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


NATIVE_LIBRARY = "strongroom_agent/_native.abi3.so"  # built by ``make native`` into the checkout (ADR 0080)


def base_agent(rev: str, into: Path) -> Path:
    """``agent/src`` of ``rev``, extracted from git into ``into``."""
    return extracted(rev, "agent/src", into)


def head_agent(into: Path) -> Path:
    """``agent/src`` of HEAD with the checkout's built native extension (when built) copied in."""
    src = base_agent("HEAD", into)
    built = ROOT / "agent/src" / NATIVE_LIBRARY
    if built.exists():
        shutil.copy2(built, src / NATIVE_LIBRARY)
        log(f"this checkout's agent carries its native extension ({NATIVE_LIBRARY})")
    else:
        log("this checkout's agent has no native extension (not built: `make native`)")
    return src


def variant_envs(ours: str, specs: list[str]) -> dict[str, dict[str, str]]:
    """The ``--variant`` sides of this checkout by engine name (``strongroom[NAME]``); exits on a malformed spec."""
    try:
        return {f"{ours}[{name}]": env for name, env in parse_variants(specs).items()}
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def extracted(rev: str, tree: str, into: Path) -> Path:
    """The directory ``tree`` of ``rev``, extracted from git into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, tree], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / tree


GATEWAY_SRC = "services/agent-gateway/src"
GC_PROBE = HERE / "_gc_probe"


def probed(env: dict[str, str], probe: Path | None) -> dict[str, str]:
    """``env`` with the garbage collector probe (``_gc_probe``) writing into ``probe``, when given."""
    if probe is None:
        return env
    probe.unlink(missing_ok=True)
    path = [p for p in (env.get("PYTHONPATH"), str(GC_PROBE)) if p]
    return {**env, "PYTHONPATH": os.pathsep.join(path), "BENCH_GC_PROBE": str(probe)}


def gc_totals(probe: Path | None) -> dict[str, list[float]]:
    """The probe's totals per generation (``[collections, CPU s, unreachable]``); empty without one."""
    if probe is None or not probe.exists():
        return {}
    totals: dict[str, list[float]] = json.loads(probe.read_text())
    return totals


def gc_spent(before: dict[str, list[float]], after: dict[str, list[float]]) -> tuple[float, str]:
    """The collector's CPU seconds between two readings, and a line per generation."""
    parts, seconds = [], 0.0
    for gen, (count, cpu, found) in after.items():
        count0, cpu0, found0 = before.get(gen, [0, 0.0, 0])
        seconds += cpu - cpu0
        parts.append(f"gen{gen} {count - count0:.0f}x {cpu - cpu0:.2f}s ({found - found0:.0f} unreachable)")
    return seconds, ", ".join(parts)


async def start_probes(bench: StrongroomBench, args: argparse.Namespace) -> tuple[Path, Path] | None:
    """With ``--gc-probe``: the agent's and the gateway's probe files (the gateway restarted with its probe
    now unless ``--swap-gateway`` restarts it before each restore anyway)."""
    if not args.gc_probe:
        return None
    probes = (bench.work / "gc-agent.json", bench.work / "gc-gateway.json")
    if not args.swap_gateway:
        await swap_gateway(bench, None, probes[1])  # this checkout's gateway, probed
    return probes


def gc_readings(probes: tuple[Path, Path] | None) -> list[dict[str, list[float]]]:
    """The agent's and the gateway's probe totals now (none without probes)."""
    return [gc_totals(p) for p in probes or ()]


async def gc_report(
    table: Table, metric: str, name: str, probes: tuple[Path, Path] | None, before: list[dict[str, list[float]]]
) -> None:
    """Log and tabulate the collector's CPU in the agent and the gateway since ``before`` (nothing without probes)."""
    if probes is None:
        return
    await asyncio.sleep(0.5)  # the probes' files are rewritten every 0.2 s
    for process, probe, earlier in zip(("agent", "gateway"), probes, before, strict=True):
        seconds, detail = gc_spent(earlier, gc_totals(probe))
        table.add(f"{metric}, {process} gc CPU (s)", name, seconds)
        log(f"  {process} gc: {seconds:.2f}s: {detail}")


async def swap_gateway(bench: StrongroomBench, src: Path | None, probe: Path | None = None) -> None:
    """Restart the gateway with ``src`` (a revision's ``strongroom_gateway``) first on its path, on the
    same listeners (its peers' channels and the agent find it again); ``probe``: with the gc probe."""
    stack = bench.stack
    assert stack is not None
    old = stack.processes["gateway"]
    public = old.announced["gateway"]
    await old.stop()
    env = probed({**bench.env, **({"PYTHONPATH": str(src)} if src is not None else {})}, probe)
    # Still listed: its addresses (public, internal, agents) are the ones the new process takes.
    stack.processes["gateway"] = await stack._start_one("gateway", env, bench.work / "logs", public, 90.0)


async def swap_agent(
    bench: StrongroomBench,
    inst: Instance,
    src: Path | None,
    probe: Path | None = None,
    extra: dict[str, str] | None = None,
) -> None:
    """Restart the instance's agent with ``src`` first on its path (None: this checkout's agent);
    ``probe``: with the gc probe writing there; ``extra``: more environment (a ``--variant``)."""
    await inst.agent.stop()
    env = {k: v for k, v in bench.env.items() if k != "STRONGROOM_PG_MIGRATE_DSN"}
    env["BENCH_UNTHROTTLED"] = "1"
    env.update(extra or {})
    if src is not None:
        env["PYTHONPATH"] = str(src)
    env = probed(env, probe)
    run = [sys.executable, str(HERE / "_agent.py"), "run", "--state-dir", str(inst.state_dir)]
    inst.agent = await spawn(f"agent-{inst.instance_id[:8]}", run, env, bench.work / "logs")
    await asyncio.sleep(3.0)  # its session is up (a job sent before is delivered when it connects)


async def swap_engine(
    bench: StrongroomBench,
    inst: Instance,
    agent: Path | None,
    gateway: Path | None,
    probes: tuple[Path, Path] | None = None,
    extra: dict[str, str] | None = None,
) -> None:
    """Restart the gateway with ``gateway`` (when given), then the agent with ``agent``; ``probes``: the
    gc probe's files of the agent and the gateway; ``extra``: more environment for the agent."""
    if gateway is not None:
        await swap_gateway(bench, gateway, probes[1] if probes else None)
    await swap_agent(bench, inst, agent, probes[0] if probes else None, extra)


def s3_cpu(bench: StrongroomBench) -> float:
    """versitygw's CPU seconds so far (every engine's restore costs it some)."""
    assert bench.s3 is not None and bench.s3.pid is not None
    return cpu_seconds(bench.s3.pid)


ACCESS_LOG = "versitygw-access.log"


def s3_counters(bench: StrongroomBench) -> dict[str, float]:
    """versitygw's counters so far: what it read (``rchar``: the objects' bytes it was asked for, from its
    files) and wrote (``wchar``: the responses, TLS records included), its read and write system calls,
    and the GetObject requests its access log holds (``--s3-requests``; else none)."""
    assert bench.s3 is not None and bench.s3.pid is not None
    io = proc_io(bench.s3.pid)
    counters = {
        "MB read": io["rchar"] / 1e6,
        "MB written": io["wchar"] / 1e6,
        "read calls": float(io["syscr"]),
        "write calls": float(io["syscw"]),
    }
    log_file = bench.work / ACCESS_LOG
    if log_file.exists():
        with log_file.open("rb") as f:
            counters["GetObject requests"] = float(sum(b" s3_GetObject " in line for line in f))
    return counters


def log_requests(bench: StrongroomBench, on: bool) -> None:
    """With ``on``: versitygw, started after this, writes its access log into the bench's directory
    (``s3_counters`` counts its GetObject requests). It takes the file from its environment."""
    if on:
        bench.work.mkdir(parents=True)
        os.environ["VGW_ACCESS_LOG"] = str(bench.work / ACCESS_LOG)


def s3_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The growth of each of versitygw's counters between two readings."""
    return {name: after[name] - before[name] for name in after}


async def timed_restore(
    bench: StrongroomBench, inst: Instance, point: str, dest: Path, timelines: list[str] | None, label: str
) -> Result:
    """One full restore; with ``timelines``, sampled (``restore_timeline.py``) and its summary appended."""
    if timelines is None:
        return await bench.restore(inst, point, dest)
    assert bench.s3 is not None and bench.s3.pid is not None
    pids = {"agent": inst.agent.process.pid, "gateway": bench.gateway_pid, "versitygw": bench.s3.pid}
    with Timeline(pids) as timeline:
        r = await bench.restore(inst, point, dest)
    timelines.append(timeline.summary(label))
    return r


def start_pyspy(pid: int, out: Path, name: str = "agent") -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--gil", "--native", "--threads"]
    argv += ["--rate", "50", "--output", str(out / f"{name}-gil.raw")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return proc


def stop_pyspy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(2)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


class Table:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, metric: str, engine: str, value: float) -> None:
        self.values[metric][engine].append(value)

    def restore(
        self,
        label: str,
        kind: str,
        name: str,
        wall: float,
        cpu: float,
        rss: int,
        load_before: float,
        gw: float = -1,
        s3: float = -1,
        s3_io: dict[str, float] | None = None,
    ) -> None:
        """Record and log one full restore (``gw``: the gateway's CPU seconds, Strongroom only; ``s3``: versitygw's;
        ``s3_io``: the growth of versitygw's other counters, ``s3_counters``)."""
        self.add(f"full restore, {kind}, wall (s)", name, wall)
        self.add(f"full restore, {kind}, agent CPU (s)", name, cpu)
        if gw >= 0:
            self.add(f"full restore, {kind}, gateway CPU (s)", name, gw)
        if s3 >= 0:
            self.add(f"full restore, {kind}, versitygw CPU (s)", name, s3)
            self.add(f"full restore, {kind}, all processes CPU (s)", name, cpu + max(gw, 0.0) + s3)
        self.add(f"full restore, {kind}, agent peak RSS (MB)", name, rss / 1e6)
        for counter, value in (s3_io or {}).items():
            self.add(f"full restore, {kind}, versitygw {counter}", name, value)
        gateway = f", gateway CPU {gw:.2f}s" if gw >= 0 else ""
        versity = f", versitygw CPU {s3:.2f}s" if s3 >= 0 else ""
        if s3_io:
            versity += " (" + ", ".join(f"{v:.0f} {k}" for k, v in s3_io.items()) + ")"
        log(
            f"{label} {kind} {name}: {wall:.2f}s, CPU {cpu:.2f}s{gateway}{versity}, RSS {rss / 1e6:.0f} MB"
            f" (load {load_before:.1f} -> {load():.1f})"
        )

    def render(self, ours: str) -> str:
        out = []
        for metric, engines in self.values.items():
            out += [
                f"\n### {metric}\n",
                "| engine | median | runs | min | max | this / engine |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            mine = statistics.median(engines[ours]) if engines.get(ours) else None
            for engine, vals in engines.items():
                med = statistics.median(vals)
                ratio = "—" if engine == ours or mine is None or not med else f"{mine / med:.2f}"
                out.append(f"| {engine} | {med:.2f} | {len(vals)} | {min(vals):.2f} | {max(vals):.2f} | {ratio} |")
        return "\n".join(out)


async def amain(args: argparse.Namespace) -> int:
    work: Path = args.work
    day1 = dataset.day1_tree(work, quick=args.quick)
    source_files = count_files(day1)
    bench = StrongroomBench(work / "strongroom-restore-ab", s3_tls=args.s3_tls)
    shutil.rmtree(bench.work, ignore_errors=True)
    log_requests(bench, args.s3_requests)
    await bench.start()
    table = Table()
    peer_list: list[tuple[str, peers.Peer]] = []
    pyspies: list[subprocess.Popen[bytes]] = []
    timelines: list[str] = []
    try:
        inst = await bench.new_instance(day1, unthrottled=True)
        r = await bench.backup(inst)
        point = await bench.latest_point(inst, 1)
        log(f"strongroom backup {r.wall:.1f}s (load {load():.1f})")
        ours = "strongroom"
        # This checkout's agent as committed (HEAD), so edits during the run change nothing.
        head = head_agent(work / "restore-ab-head")
        agents: dict[str, Path | None] = {ours: head}
        bases = {f"strongroom@{rev}": base_agent(rev, work / f"restore-ab-base-{n}") for n, rev in enumerate(args.base)}
        envs = variant_envs(ours, args.variant)
        agents = {**bases, **agents, **dict.fromkeys(envs, head)}
        revs = {ours: "HEAD", **{f"strongroom@{rev}": rev for rev in args.base}, **dict.fromkeys(envs, "HEAD")}
        gateways = (
            {
                name: extracted(rev, GATEWAY_SRC, work / f"restore-ab-gw-{n}")
                for n, (name, rev) in enumerate(revs.items())
            }
            if args.swap_gateway
            else {}
        )
        for tool in [p for p in args.peers.split(",") if p]:
            peer = peers.Peer(tool, work / f"restore-ab-{tool}", s3_bucket(bench, tool))
            peer.init()
            m = peer.backup(day1, "day1")
            log(f"{tool} backup {m.wall:.1f}s (load {load():.1f})")
            peer_list.append((f"{tool}/s3", peer))
        if args.pyspy_gil:  # one extra restore of this checkout's agent, profiled and not counted
            await swap_agent(bench, inst, agents[ours])
            pyspies.append(start_pyspy(inst.agent.process.pid, args.pyspy_gil))
            pyspies.append(start_pyspy(bench.gateway_pid, args.pyspy_gil, "gateway"))
            dest = TMPFS / f"restore-ab-{uuid.uuid4().hex[:6]}"
            s3_before = s3_cpu(bench)
            try:
                r = await bench.restore(inst, point, dest)
            finally:
                shutil.rmtree(dest, ignore_errors=True)
                while pyspies:
                    stop_pyspy(pyspies.pop())
            log(
                f"profiled restore {r.wall:.2f}s, agent CPU {r.agent_cpu:.2f}s, gateway CPU {r.gateway_cpu:.2f}s,"
                f" versitygw CPU {s3_cpu(bench) - s3_before:.2f}s (load {load():.1f})"
            )
        targets = [("tmpfs", TMPFS)] + ([("disk", work)] if args.disk else [])
        probes = await start_probes(bench, args)
        for n in range(args.rounds):
            for kind, parent in targets:
                for name, src in agents.items():
                    if len(agents) > 1 or n == 0:
                        await swap_engine(bench, inst, src, gateways.get(name), probes, envs.get(name))
                    dest = parent / f"restore-ab-{uuid.uuid4().hex[:6]}"
                    before, s3_before, io_before = load(), s3_cpu(bench), s3_counters(bench)
                    gc_before = gc_readings(probes)
                    label = f"round {n + 1} {kind} {name} (load {before:.1f})"
                    try:
                        r = await timed_restore(bench, inst, point, dest, timelines if args.timeline else None, label)
                        s3, s3_io = s3_cpu(bench) - s3_before, s3_spent(io_before, s3_counters(bench))
                        if n == 0 and count_files(dest) != source_files:
                            raise RuntimeError(f"{name}: {count_files(dest)} files restored of {source_files}")
                    finally:
                        shutil.rmtree(dest, ignore_errors=True)
                    table.restore(
                        f"round {n + 1}",
                        kind,
                        name,
                        r.wall,
                        r.agent_cpu,
                        r.agent_peak_rss,
                        before,
                        r.gateway_cpu,
                        s3,
                        s3_io,
                    )
                    await gc_report(table, f"full restore, {kind}", name, probes, gc_before)
                for name, peer in peer_list:
                    dest = parent / f"restore-ab-{uuid.uuid4().hex[:6]}"
                    before, io_before = load(), s3_counters(bench)
                    m, s3 = await asyncio.to_thread(peer.restore_removed, day1, "day1", dest, lambda: s3_cpu(bench))
                    s3_io = s3_spent(io_before, s3_counters(bench))
                    table.restore(f"round {n + 1}", kind, name, m.wall, m.cpu, m.peak_rss, before, s3=s3, s3_io=s3_io)
    except BaseException:
        # The services' and agents' logs outlive a failed run (the stack's directory is removed below).
        shutil.copytree(bench.work / "logs", work / "restore-ab-logs", dirs_exist_ok=True)
        raise
    finally:
        while pyspies:
            stop_pyspy(pyspies.pop())
        for _name, peer in peer_list:
            peer.cleanup()
        await bench.stop()
        shutil.rmtree(bench.work, ignore_errors=True)
    text = table.render("strongroom")
    if timelines:
        text += "\n\n### Timelines\n\n" + "\n\n".join(timelines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--base", action="append", default=[], help="a revision whose agent is restored with too (repeatable)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", default="restic,rustic")
    parser.add_argument("--disk", action="store_true", help="also restore onto the data set's disk")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--swap-gateway", action="store_true", help="each engine's restores use its revision's gateway too"
    )
    parser.add_argument("--s3-tls", action="store_true", help="S3 over HTTPS for the gateway and every peer")
    parser.add_argument("--pyspy-gil", type=Path, help="record this checkout's agent with py-spy --gil --native")
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "strongroom-bench"
    )
    parser.add_argument("--timeline", action="store_true", help="sample every Strongroom restore every 0.25 s")
    parser.add_argument(
        "--gc-probe", action="store_true", help="the agent's and the gateway's garbage collector CPU per restore"
    )
    parser.add_argument(
        "--s3-requests", action="store_true", help="count each restore's GetObject requests (versitygw's access log)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:KEY=VALUE: this checkout's agent with KEY=VALUE in its environment, restored with too",
    )
    parser.add_argument("--out", type=Path)
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
