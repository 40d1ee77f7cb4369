"""The fleet benchmark's control plane: every service twice, kill -9 and restart, and /proc sampling.

``strongroom_cli.stack.Stack`` starts one process per service (replica 1; the peers' addresses
point at it). ``Replicas`` adds replica 2 of each with its own listeners (public, internal mTLS,
and for the gateway its agent mTLS listener), all on the same PostgreSQL roles, Kafka consumer
groups and bucket, as a horizontally scaled deployment runs them. A killed replica is restarted
on the listeners it had, so its peers' channels and its agents' sessions find it again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from strongroom_cli.stack import AGENTS, INTERNAL, MODULES, SERVICES, ManagedProcess, Stack, service_env, spawn, tls_env

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Replica:
    service: str
    index: int  # 1 or 2
    process: ManagedProcess
    listen: dict[str, str]  # announced name -> address

    @property
    def label(self) -> str:
        return f"{self.service}-{self.index}"


@dataclass
class Replicas:
    stack: Stack
    base_env: Mapping[str, str]
    log_dir: Path
    replicas: list[Replica] = field(default_factory=list)
    restarts: list[Replica] = field(default_factory=list)  # processes that were killed

    def adopt_stack(self) -> None:
        """Replica 1 of each service: the processes ``Stack`` started."""
        for name in SERVICES:
            proc = self.stack.processes[name]
            self.replicas.append(Replica(name, 1, proc, dict(proc.announced)))

    async def _spawn(self, name: str, index: int, listen: Mapping[str, str]) -> Replica:
        env = service_env(self.base_env, self.stack.addresses)
        env.pop("STRONGROOM_PG_MIGRATE_DSN", None)  # replica 1 migrated; a service never holds the owner's DSN
        env["STRONGROOM_PG_DSN"] = self.stack.databases[name]
        env["STRONGROOM_GRPC_LISTEN"] = listen.get(name, "127.0.0.1:0")
        assert self.stack.tls_dir is not None
        env.update(
            tls_env(
                self.stack.tls_dir,
                name,
                internal_listen=listen.get(name + INTERNAL, "127.0.0.1:0"),
                agents_listen=listen.get(AGENTS, "127.0.0.1:0"),
            )
        )
        also = (name + INTERNAL, AGENTS) if name == "gateway" else (name + INTERNAL,)
        argv = [sys.executable, "-m", MODULES[name]]
        proc = await spawn(f"{name}-{index}", argv, env, self.log_dir, announce=name, also_announce=also)
        return Replica(name, index, proc, dict(proc.announced))

    async def start_second(self) -> None:
        for name in SERVICES:
            self.replicas.append(await self._spawn(name, 2, {}))

    def of(self, service: str) -> list[Replica]:
        return [r for r in self.replicas if r.service == service]

    async def kill_and_restart(self, victims: list[Replica]) -> list[Replica]:
        """``kill -9`` the replicas' processes all at once, then start each again on its listeners."""
        for replica in victims:
            os.kill(replica.process.process.pid, signal.SIGKILL)
        for replica in victims:
            await replica.process.process.wait()
        self.restarts.extend(victims)
        started = await asyncio.gather(*(self._spawn(r.service, r.index, r.listen) for r in victims))
        for replica, again in zip(victims, started, strict=True):
            self.replicas[self.replicas.index(replica)] = again
            if replica.index == 1:
                self.stack.processes[replica.service] = again.process
        return list(started)

    async def stop_extra(self) -> None:
        """Stop what ``Stack.stop`` does not know: replica 2 of each service."""
        for replica in self.replicas:
            if replica.process is not self.stack.processes.get(replica.service):
                await replica.process.stop()


# --------------------------------------------------------------------------------------------- /proc


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """utime+stime of ``pid`` (plus cutime+cstime: children it has reaped, for PostgreSQL's backends)."""
    fields = _stat(pid)
    total = int(fields[11]) + int(fields[12])
    if reaped_children:
        total += int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


@dataclass
class Tracked:
    """One process (or a process tree, ``tree``: PostgreSQL) whose CPU and memory are sampled."""

    label: str
    pid: int
    tree: bool = False
    cpu0: float = 0.0
    cpu: float = 0.0  # seconds since the window started
    peak: int = 0  # bytes: VmHWM (one process) or the tree's largest summed RSS seen
    dead: float = 0.0  # CPU seconds of earlier incarnations (a killed and restarted replica)

    def _cpu_now(self) -> float:
        total = cpu_seconds(self.pid, reaped_children=self.tree)
        if self.tree:
            for child in children(self.pid):
                try:
                    total += cpu_seconds(child)
                except OSError:
                    continue
        return total

    def start(self) -> None:
        self.cpu0 = self._cpu_now()

    def sample(self) -> None:
        try:
            self.cpu = self.dead + self._cpu_now() - self.cpu0
            if self.tree:
                rss = rss_bytes(self.pid)
                for child in children(self.pid):
                    try:
                        rss += rss_bytes(child)
                    except OSError:
                        continue
                self.peak = max(self.peak, rss)
            else:
                self.peak = max(self.peak, peak_rss(self.pid))
        except OSError:
            pass  # exited between the listing and the read (a killed replica): the last sample stands

    def replaced_by(self, pid: int) -> None:
        """The process was killed and restarted: keep counting its CPU under the same label."""
        self.dead, self.pid, self.cpu0 = self.cpu, pid, 0.0  # a fresh process: all its CPU is in the window
