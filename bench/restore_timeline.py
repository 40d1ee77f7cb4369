"""A restore's timeline from outside the processes: CPU per process and thread, and bytes moved (issue 13).

``Timeline`` samples, every ``interval`` seconds in a thread of the bench, for each named process:
its CPU (utime + stime of ``/proc/<pid>/stat``), the CPU of each of its threads grouped by thread
name (``/proc/<pid>/task/*/stat``: the agent's event loop vs its ``restore-write`` threads, the
gateway's loop vs its ``read-verify`` threads) and ``rchar``/``wchar`` of ``/proc/<pid>/io``.
rchar/wchar are part of the pipeline's flow without touching the processes: the gateway's rchar is
what it read from S3 (and PostgreSQL), the agent's wchar what it wrote into the destination. gRPC's
own socket traffic (``sendmsg``/``recvmsg``) is not counted there, so the agent↔gateway flow is
not visible. Python threads all carry the OS name ``python``: threads are told apart by id.
``summary`` renders the busy-core
profile (how much of the restore had fewer than 1, 1.5 and 2 cores busy) and a per-second table.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_cpu(path: Path) -> tuple[str, float]:
    text = path.read_text()
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return name, (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_io(pid: int) -> dict[str, int]:
    """``/proc/<pid>/io``'s counters by name (``rchar``, ``wchar``, ``syscr``, ``syscw``, ...)."""
    values = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        values[key] = int(value)
    return values


def _io(pid: int) -> tuple[int, int]:
    values = proc_io(pid)
    return values.get("rchar", 0), values.get("wchar", 0)


def _thread_group(name: str) -> str:
    """Threads of one pool under one name (``restore-write_0`` → ``restore-write``)."""
    return name.rstrip("0123456789").rstrip("_-") or name


@dataclass
class Sample:
    t: float
    cpu: dict[str, float]  # process name → CPU seconds so far
    threads: dict[str, float]  # "process/thread group" → CPU seconds so far
    io: dict[str, tuple[int, int]]  # process name → (rchar, wchar)


@dataclass
class Timeline:
    pids: dict[str, int]
    interval: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self, t0: float) -> Sample:
        cpu: dict[str, float] = {}
        threads: dict[str, float] = defaultdict(float)
        io: dict[str, tuple[int, int]] = {}
        for name, pid in self.pids.items():
            try:
                cpu[name] = _stat_cpu(Path(f"/proc/{pid}/stat"))[1]
                io[name] = _io(pid)
                for task in Path(f"/proc/{pid}/task").iterdir():
                    try:
                        tname, tcpu = _stat_cpu(task / "stat")
                    except (FileNotFoundError, ProcessLookupError):
                        continue
                    threads[f"{name}/{_thread_group(tname)}-{task.name}"] += tcpu
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        return Sample(time.perf_counter() - t0, cpu, dict(threads), io)

    def _run(self) -> None:
        t0 = time.perf_counter()
        next_at = t0
        while not self._stop.is_set():
            self.samples.append(self._sample(t0))
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.perf_counter()))
        self.samples.append(self._sample(t0))

    def __enter__(self) -> Timeline:
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def busy(self) -> list[tuple[float, float]]:
        """(time, cores busy over the interval ending then), all processes together."""
        out = []
        for a, b in zip(self.samples, self.samples[1:], strict=False):
            dt = b.t - a.t
            if dt > 0:
                out.append((b.t, sum(b.cpu.get(n, 0) - a.cpu.get(n, 0) for n in self.pids) / dt))
        return out

    def summary(self, label: str, cores: int | None = None) -> str:
        cores = cores or os.cpu_count() or 1
        if len(self.samples) < 2:
            return f"{label}: too short for a timeline"
        first, last = self.samples[0], self.samples[-1]
        wall = last.t - first.t
        busy = self.busy()
        dts = [b.t - a.t for a, b in zip(self.samples, self.samples[1:], strict=False)]
        below = {
            threshold: sum(dt for dt, (_, c) in zip(dts, busy, strict=False) if c < threshold)
            for threshold in (1.0, 1.5, cores - 0.25)
        }
        total = sum(last.cpu.get(n, 0) - first.cpu.get(n, 0) for n in self.pids)
        lines = [
            f"#### {label}: timeline every {self.interval} s ({len(self.samples)} samples, {wall:.2f} s)",
            "",
            f"CPU of {' + '.join(self.pids)}: {total:.2f} s over {wall:.2f} s = {total / wall:.2f} cores busy"
            f" on average of {cores}; time with < 1 core busy {below[1.0]:.2f} s, < 1.5 cores {below[1.5]:.2f} s,"
            f" < {cores - 0.25:g} cores {below[cores - 0.25]:.2f} s.",
            "",
        ]
        groups = sorted(last.threads, key=lambda g: -(last.threads[g] - first.threads.get(g, 0)))
        lines.append(
            "Threads (CPU s): "
            + ", ".join(f"{g} {last.threads[g] - first.threads.get(g, 0):.2f}" for g in groups[:10])
            + "."
        )
        lines += ["", "Per second (cores busy per process; MB/s of rchar/wchar per process):", ""]
        header = "| s | " + " | ".join(self.pids) + " | all | " + " | ".join(f"{n} r/w MB" for n in self.pids) + " |"
        lines += [header, "|" + "---:|" * (2 * len(self.pids) + 2)]
        step = max(1, round(1.0 / self.interval))
        for i in range(0, len(self.samples) - 1, step):
            a, b = self.samples[i], self.samples[min(i + step, len(self.samples) - 1)]
            dt = b.t - a.t
            if dt <= 0:
                continue
            per = [(b.cpu.get(n, 0) - a.cpu.get(n, 0)) / dt for n in self.pids]
            flow = []
            for n in self.pids:
                (r0, w0), (r1, w1) = a.io.get(n, (0, 0)), b.io.get(n, (0, 0))
                flow.append(f"{(r1 - r0) / dt / 1e6:.0f}/{(w1 - w0) / dt / 1e6:.0f}")
            lines.append(
                f"| {a.t:.0f} | "
                + " | ".join(f"{p:.2f}" for p in per)
                + f" | {sum(per):.2f} | "
                + " | ".join(flow)
                + " |"
            )
        return "\n".join(lines)
