"""``bench/sessions.py --probe``: timestamps of each step of a job's delivery, taken outside the
gateways (a trigger on ``gateway.jobs`` and a ``LISTEN`` of the bench), and their table."""

from __future__ import annotations

import statistics
import time

import asyncpg
from _latency import percentile

PROBE_SQL = """
CREATE TABLE IF NOT EXISTS gateway.bench_probe (job_id text NOT NULL, what text NOT NULL, at timestamptz NOT NULL);
GRANT INSERT ON gateway.bench_probe TO PUBLIC;
CREATE OR REPLACE FUNCTION gateway.bench_probe_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO gateway.bench_probe VALUES (NEW.job_id, 'insert', clock_timestamp());
    ELSIF NEW.state = 'delivered' AND OLD.state = 'queued' THEN
        INSERT INTO gateway.bench_probe VALUES (NEW.job_id, 'mark', clock_timestamp());
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_probe_jobs ON gateway.jobs;
CREATE TRIGGER bench_probe_jobs AFTER INSERT OR UPDATE OF state ON gateway.jobs
    FOR EACH ROW EXECUTE FUNCTION gateway.bench_probe_jobs();
"""


class Probe:
    """Timestamps of the delivery path, taken outside the gateways (``--probe``): when each job's row
    was inserted and marked delivered (``clock_timestamp()`` in a trigger: the statement's time,
    before its commit), and when this process received the ``NOTIFY`` that names its instance (sent
    on the consuming transaction's commit; the bench listens like a third gateway)."""

    def __init__(self) -> None:
        self.notified: dict[str, float] = {}
        self._conn: asyncpg.Connection | None = None

    async def start(self, dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        await conn.execute(PROBE_SQL)
        await conn.add_listener("gateway_sessions", self._on_notification)
        self._conn = conn

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        at = time.time()
        kind, _, rest = str(payload).partition(":")
        if kind != "w":
            return
        for instance_id in rest.partition(":")[2].split(" "):
            if instance_id:
                self.notified.setdefault(instance_id, at)

    async def stamps(self) -> dict[tuple[str, str], float]:
        assert self._conn is not None
        rows = await self._conn.fetch("SELECT job_id, what, min(at) AS at FROM gateway.bench_probe GROUP BY 1, 2")
        return {(r["job_id"], r["what"]): r["at"].timestamp() for r in rows}

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


def probe_table(
    jobs: dict[str, str],
    issued: float,
    stamps: dict[tuple[str, str], float],
    notified: dict[str, float],
    received: dict[str, float],
    stored: dict[str, float],
) -> list[str]:
    """``--probe``: each step of every job's path, in ms from the publish, and each step's own share."""
    steps = {
        "handler (the job's `created_at`, the clock read in the handler)": {j: stored[j] for j in jobs if j in stored},
        "row inserted (trigger)": {j: stamps[(j, "insert")] for j in jobs if (j, "insert") in stamps},
        "NOTIFY received (the consuming transaction committed)": {
            j: notified[i] for j, i in jobs.items() if i in notified
        },
        "marked delivered (trigger: the delivery transaction's read done)": {
            j: stamps[(j, "mark")] for j in jobs if (j, "mark") in stamps
        },
        "received by the agent": {j: received[j] for j in jobs if j in received},
    }
    out = [
        "## Probe: each step, ms after the publish began",
        "",
        "| step | jobs | first | p50 | p95 | last | step's own p50 / p95 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    previous: dict[str, float] | None = None
    for name, at in steps.items():
        after = [(t - issued) * 1000 for t in at.values()]
        if not after:
            out.append(f"| {name} | 0 | | | | | |")
            continue
        own = ""
        if previous is not None:
            gaps = [(at[j] - previous[j]) * 1000 for j in at if j in previous]
            if gaps:
                own = f"{statistics.median(gaps):.0f} / {percentile(gaps, 0.95):.0f}"
        out.append(
            f"| {name} | {len(after)} | {min(after):.0f} | {statistics.median(after):.0f} |"
            f" {percentile(after, 0.95):.0f} | {max(after):.0f} | {own} |"
        )
        previous = at
    return out
