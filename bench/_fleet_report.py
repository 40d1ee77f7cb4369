"""The report of ``bench/fleet.py``: the table of figures, the processes, and the per-unit costs.

``render(fleet)`` reads what the driver measured (``fleet.figures``, ``fleet.tracked``,
``fleet.observed``) and writes markdown; the per-unit costs are what ``docs/scale.md`` projects from.
"""

from __future__ import annotations

import os
import platform
from collections import Counter
from typing import Any

from _latency import percentile

SERVICES = ("gateway", "scheduler", "catalog", "billing", "restore")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def render(fleet: Any) -> str:  # noqa: ANN401 - the driver's Fleet (bench/fleet.py runs as a script)
    f, a = fleet.figures, fleet.args
    n_act, t_act = f["activation"]
    n_enr, t_enr = f["enrollment"]
    idle = f["idle"]
    lines = [
        f"# Fleet simulator: {a.instances} instances, {a.replicas} replicas of every service",
        "",
        f"- commit `{fleet.commit}`, {platform.node()}, {os.cpu_count()} cores;"
        f" load average at start {fleet.load0}, at end {load_average()}",
        f"- window {a.window_minutes} min, schedule interval {a.schedule_interval} s;"
        f" per job {a.fresh_chunks} fresh"
        f" + {a.common_chunks} common chunks of {a.chunk_bytes} B; {a.per_account} instances per account;"
        f" {a.workers} simulator process(es); kill: {'replica ' + str(a.kill_replica) if a.kill else 'no'}",
        "",
        "| figure | value |",
        "|---|---|",
        f"| activation rate | {n_act / t_act:.1f}/s ({n_act} in {t_act:.1f} s, {a.concurrency} in flight) |",
        f"| enrollment → every session up | {n_enr} in {t_enr:.1f} s ({n_enr / t_enr:.1f}/s) |",
    ]
    for name, (n, p50, p95, last) in sorted(f["event_lag"].items()):
        lines.append(f"| event lag {name} | p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms,"
                     f" last claim {last:.1f} s after the last event (n={n}) |")  # fmt: skip
    d = f["delivery"]
    lines += [
        f"| idle: PostgreSQL commits/s ({len(fleet.observed.connections)} sessions, {idle['seconds']:.0f} s) |"
        f" {idle['commits_per_s']:.1f} (no session yet: {f['baseline']['commits_per_s']:.1f}) |",
        "| idle: gateway cores | "
        + ", ".join(f"{k} {v:.3f}" for k, v in sorted(idle["gateway_cores"].items()))
        + " (no session yet: "
        + ", ".join(f"{k} {v:.3f}" for k, v in sorted(f["baseline"]["gateway_cores"].items()))
        + ") |",
        f"| job delivery (created → session has it) | p50 {percentile(d, 0.5) * 1000:.0f} ms,"
        f" p95 {percentile(d, 0.95) * 1000:.0f} ms,"
        f" max {max(d, default=float('nan')) * 1000:.0f} ms (n={len(d)}) |",
        *[
            f"| job delivery, sessions on {label} | p50 {percentile(v, 0.5) * 1000:.0f} ms,"
            f" p95 {percentile(v, 0.95) * 1000:.0f} ms (n={len(v)}) |"
            for label, v in sorted(f["delivery_by_gateway"].items())
        ],
        "| job delivery, first / last 10% of jobs created |"
        f" p95 {percentile(f['delivery_first'], 0.95) * 1000:.0f} ms /"
        f" {percentile(f['delivery_last'], 0.95) * 1000:.0f} ms |",
        f"| jobs completed per hour | {f['jobs_per_hour']:.0f} ({f['complete']} in {f['span']:.0f} s,"
        " first created → last finished) |",
        f"| catalog index lag (commit → browsable) | p50 {percentile(f['index_lag'], 0.5):.2f} s,"
        f" p95 {percentile(f['index_lag'], 0.95):.2f} s, max {max(f['index_lag'], default=float('nan')):.2f} s"
        f" (n={len(f['index_lag'])}; 1 s polling) |",
        f"| PostgreSQL commits/s in the window | mean {f['commits_per_s']:.0f},"
        f" peak 1 s {f['commits_per_s_peak']:.0f} |",
        f"| jobs per instance (count: instances) | {dict(f['per_instance'])}; without a job:"
        f" {f['instances_without_job']} |",
        f"| job statuses (4 COMPLETE, 6 FAILED) | {dict(f['statuses'])} |",
        f"| points per instance (count: instances) | {dict(f['point_counts'])} |",
        f"| RunBackup received twice for a job / JobFinished sent n times | {f['duplicate_deliveries']} /"
        f" {dict(f['finished_reports'])} |",
        f"| session connection attempts after the first / simulator errors | {f['reconnects']} /"
        f" {len(fleet.observed.errors)} |",
    ]
    wall = f["window_wall"]
    lines += ["", f"Processes over the window ({wall:.0f} s): CPU seconds, cores (CPU / wall), peak RSS", ""]
    lines += ["| process | CPU s | cores | peak RSS MB |", "|---|---|---|---|"]
    ranked = sorted(fleet.tracked.values(), key=lambda t: -t.cpu)
    for t in ranked:
        lines.append(f"| {t.label} | {t.cpu:.1f} | {t.cpu / wall:.2f} | {t.peak / 1e6:.0f} |")
    top = ranked[0]
    grow = percentile(f["delivery_last"], 0.95) / max(percentile(f["delivery_first"], 0.95), 1e-3)
    lines += [
        "",
        f"Saturates first: **{top.label}** at {top.cpu / wall:.2f} cores"
        f" (next {ranked[1].label} {ranked[1].cpu / wall:.2f}); job-delivery p95 of the last 10% of jobs is"
        f" {grow:.1f}x the first 10%'s.",
    ]
    lines += ["", *unit_costs(fleet)]
    if fleet.notes:
        lines += ["", *[f"- {note}" for note in fleet.notes]]
    if fleet.observed.errors:
        lines += ["", "Simulator errors (first 5):", *[f"- {e}" for e in fleet.observed.errors[:5]]]
    return "\n".join(lines) + "\n"


def _per(value: float, n: int) -> str:
    """``value / n``: three significant digits, without an exponent."""
    if not n:
        return "n/a"
    x = value / n
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) >= 0.001 else f"{x:.6f}"


def unit_costs(fleet: Any) -> list[str]:  # noqa: ANN401
    """Per-unit costs, the inputs of ``docs/scale.md``'s projection (each from this run's window)."""
    f = fleet.figures
    jobs = int(f["complete"])
    wall = float(f["window_wall"])
    commits = f["commits_per_s"] * wall
    s3: Counter[str] = f["s3_window"]
    s3_enroll: Counter[str] = f["s3_enrollment"]
    n_enrolled = f["enrollment"][0]
    points = len(fleet.browsable)
    sessions = len(fleet.observed.connections)
    idle, base = f["idle"], f["baseline"]
    idle_cores, base_cores = sum(idle["gateway_cores"].values()), sum(base["gateway_cores"].values())
    before, gateways_after, sims = f["rss_sessions"]
    lines = [
        f"Per-unit costs over the window ({jobs} COMPLETE jobs, {wall:.0f} s; CPU of both replicas together)",
        "",
        "| unit | value |",
        "|---|---|",
    ]
    for service in SERVICES:
        cpu = sum(t.cpu for label, t in fleet.tracked.items() if label.rsplit("-", 1)[0] == service)
        lines.append(f"| CPU s per job, {service} | {_per(cpu, jobs)} |")
    for label in ("postgresql", "kafka", "versitygw"):
        if label in fleet.tracked:
            lines.append(f"| CPU s per job, {label} | {_per(fleet.tracked[label].cpu, jobs)} |")
    sim_cpu = sum(t.cpu for label, t in fleet.tracked.items() if label.startswith("sim-agents"))
    lines += [
        f"| CPU s per job, simulated agents | {_per(sim_cpu, jobs)} |",
        f"| PostgreSQL commits per job (xact_commit: read-only transactions count too) | {_per(commits, jobs)}"
        f" ({_per(commits - base['commits_per_s'] * wall, jobs)} net of the no-session baseline) |",
        "| PostgreSQL rows written per job, by schema | "
        + ", ".join(f"{k} {_per(v, jobs)}" for k, v in f["rows_written"].items() if v)
        + " |",
        f"| S3 requests per job | {_per(sum(s3.values()), jobs)} ("
        + ", ".join(f"{op} {_per(k, jobs)}" for op, k in s3.most_common(6))
        + ") |",
        f"| S3 requests per enrollment | {_per(sum(s3_enroll.values()), n_enrolled)} ("
        + ", ".join(f"{op} {_per(k, n_enrolled)}" for op, k in s3_enroll.most_common(4))
        + ") |",
        f"| catalog bytes per point (schema growth over the window / browsable points) |"
        f" {_per(f['catalog_bytes'] / 1024, points)} KiB ({f['catalog_bytes'] / 1e6:.1f} MB / {points}) |",
        f"| idle sessions: PostgreSQL commits/s per 1,000 sessions (idle − baseline) |"
        f" {_per((idle['commits_per_s'] - base['commits_per_s']) * 1000, sessions)}"
        f" ({idle['commits_per_s']:.1f} with {sessions} sessions, {base['commits_per_s']:.1f} with none) |",
        f"| idle sessions: gateway cores per 1,000 sessions (idle − baseline) |"
        f" {_per((idle_cores - base_cores) * 1000, sessions)} ({idle_cores:.4f} with, {base_cores:.4f} without) |",
    ]
    grown = sum(gateways_after.get(k, 0) - v for k, v in before.items())
    lines.append(
        f"| gateway RSS per session (after − before the agents, both replicas) | {_per(grown / 1024, sessions)} KiB |"
    )
    lines.append(
        f"| simulator RSS per simulated agent (the processes' RSS / agents, interpreter included) |"
        f" {_per(sum(sims.values()) / 1024, sessions)} KiB |"
    )
    backends = getattr(fleet, "pg_backends", 0)
    lines.append(f"| PostgreSQL client connections, most seen at a progress line | {backends} |")
    if fleet.loads:
        loads = fleet.loads
        lines.append(
            f"| 1-min load average at the progress lines | min {min(loads):.2f}, mean {sum(loads) / len(loads):.2f},"
            f" max {max(loads):.2f} (n={len(loads)}) |"
        )
    return lines
