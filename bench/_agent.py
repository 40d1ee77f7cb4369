"""``python -m strongroom_agent`` for the benchmark, with opt-in switches.

With ``BENCH_UNTHROTTLED=1`` the agent's per-job read throttle is replaced by ``Unlimited`` (what
the agent already does for ``max_read_bytes_per_second == 0``), because the gateway offers no way to
send 0: HIGH priority is capped at 30 MB/s by design. Everything else is the stock agent.

With ``BENCH_MALLOC=<name>=<bytes>,...`` the allocator settings of ``strongroom_agent.memory`` are
replaced before the agent starts (experiments, ADR 0077): ``mmap_threshold``, ``trim_threshold``,
``arena_max`` (what ``tune_allocator`` applies), ``trim_floor`` and ``trim_ceiling`` (``FreedPages``'). Pass it
to the agent only with ``BENCH_AGENT_ENV_BENCH_MALLOC=...`` (``strongroom_runner.py``).

With ``BENCH_TRACEMALLOC=<file>`` the agent runs under ``tracemalloc`` and, each time the traced
Python heap grows 64 MB past its previous peak, rewrites ``<file>`` with the top allocation sites
(memory diagnosis only: tracemalloc slows the agent down several times).

With ``BENCH_YAPPI=<file>`` the agent runs under yappi (CPU clock, every thread; install it into
the environment first: ``uv pip install yappi``): ``SIGUSR1`` clears the statistics, ``SIGUSR2``
writes the functions with the most own CPU time and each thread's total to ``<file>``. Unlike
cProfile this sees the worker threads; it slows the agent down about 3x.
"""

from __future__ import annotations

import os
import threading
import time

import strongroom_agent.backup.job as backup_job
from strongroom_agent import memory
from strongroom_agent.__main__ import main
from strongroom_agent.throttle import Unlimited

if os.environ.get("BENCH_UNTHROTTLED") == "1":
    backup_job.make_throttle = lambda _rate: Unlimited()  # type: ignore[assignment]

_MALLOC_SETTINGS = {
    "mmap_threshold": "MMAP_THRESHOLD_BYTES",
    "trim_threshold": "TRIM_THRESHOLD_BYTES",
    "arena_max": "ARENA_MAX",
    "trim_floor": "TRIM_FLOOR_BYTES",
    "trim_ceiling": "TRIM_CEILING_BYTES",
}


def _malloc_settings(spec: str) -> None:
    """Replace ``memory``'s allocator constants from ``name=value,...`` (read when the agent starts)."""
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        if name not in _MALLOC_SETTINGS:
            raise SystemExit(f"BENCH_MALLOC: unknown setting {name!r} (known: {', '.join(_MALLOC_SETTINGS)})")
        if not hasattr(memory, _MALLOC_SETTINGS[name]):
            # Older or newer agents lack some settings: setting one would silently change nothing.
            raise SystemExit(f"BENCH_MALLOC: this agent's memory module has no {_MALLOC_SETTINGS[name]}")
        setattr(memory, _MALLOC_SETTINGS[name], int(value, 0))


if os.environ.get("BENCH_MALLOC"):
    _malloc_settings(os.environ["BENCH_MALLOC"])


def _trace_memory(path: str) -> None:
    import tracemalloc

    tracemalloc.start(8)

    def watch() -> None:
        reported = 0
        while True:
            time.sleep(0.5)
            current, _peak = tracemalloc.get_traced_memory()
            if current > reported + (64 << 20):
                reported = current
                stats = tracemalloc.take_snapshot().statistics("traceback")[:12]
                lines = [f"traced now: {current / 1e6:.0f} MB"]
                for stat in stats:
                    lines.append(f"{stat.size / 1e6:8.1f} MB {stat.count:8d} blocks")
                    lines += [f"      {frame}" for frame in stat.traceback.format()[-6:]]
                with open(path, "w") as f:
                    f.write("\n".join(lines) + "\n")

    threading.Thread(target=watch, daemon=True, name="bench-tracemalloc").start()


def _profile_cpu(path: str) -> None:
    import signal

    import yappi  # type: ignore[import-not-found, unused-ignore]

    yappi.set_clock_type("cpu")
    yappi.start(builtins=True, profile_threads=True)

    def dump(_signum: int, _frame: object) -> None:
        stats = yappi.get_func_stats()
        stats.sort("tsub")
        lines = [f"{'own s':>7} {'incl s':>7} {'calls':>9} function"]
        for s in stats[:60]:
            lines.append(f"{s.tsub:7.2f} {s.ttot:7.2f} {s.ncall:9d} {os.path.basename(s.module)}:{s.lineno} {s.name}")
        lines.append("threads (CPU s):")
        lines += [f"  {t.name} {t.id} {t.ttot:.2f}" for t in yappi.get_thread_stats()]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def clear(_signum: int, _frame: object) -> None:
        yappi.stop()
        yappi.clear_stats()
        yappi.start(builtins=True, profile_threads=True)

    signal.signal(signal.SIGUSR1, clear)
    signal.signal(signal.SIGUSR2, dump)


if os.environ.get("BENCH_YAPPI"):
    _profile_cpu(os.environ["BENCH_YAPPI"])

if os.environ.get("BENCH_TRACEMALLOC"):
    _trace_memory(os.environ["BENCH_TRACEMALLOC"])

if __name__ == "__main__":
    main()
