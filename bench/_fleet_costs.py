"""Per-unit costs for ``bench/fleet.py``: S3 requests from versitygw's access log, index bytes, lead time.

Plain functions, no I/O at import; the driver calls them around its phases.

- ``S3Requests``: versitygw writes one line per request to its access log (``VGW_ACCESS_LOG``,
  close to the S3 server access log format; versitygw names the operation ``s3_PutObject``, AWS
  ``REST.PUT.OBJECT``). The driver notes the file's size at the start of a phase and counts the
  operations written since.
- ``schema_bytes``: ``pg_total_relation_size`` (heap, indexes, TOAST) of every table of a schema;
  the catalog's delta over the window divided by the points indexed is the index bytes per point.
- ``ROWS_WRITTEN_SQL``: rows inserted, updated and deleted per schema (``pg_stat_user_tables``);
  the delta over the window per job says which service's tables take the writes.
- ``window_lead_seconds``: how far ahead the compressed window must start so that every
  ``UpdateSettings`` lands before its slot (a slot whose minute has begun when its update lands is
  tomorrow's: the seed's "modify next backup time" rule, ``schedule.next_run``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_OPERATION = re.compile(r"\b(s3_[A-Za-z]+|REST\.[A-Z_]+\.[A-Z_]+)\b")
_METHOD = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) ')


def operation(line: str) -> str:
    """The S3 operation of one access-log line (``s3_PutObject``), or its HTTP method, or ``?``."""
    found = _OPERATION.search(line)
    if found:
        return found.group(1)
    method = _METHOD.search(line)
    return method.group(1) if method else "?"


@dataclass
class S3Requests:
    """Counts the requests versitygw logged after :meth:`mark`."""

    log: Path
    offset: int = 0

    def mark(self) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0

    def since_mark(self) -> Counter[str]:
        if not self.log.exists():
            return Counter()
        with self.log.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        lines = data.decode(errors="replace").splitlines()
        return Counter(operation(line) for line in lines if line.strip() and not line.startswith("log starts"))


SCHEMA_BYTES_SQL = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'm', 'p')
"""


def window_lead_seconds(instances: int, width_minutes: int, updates_per_s: float, *, minimum: float = 60.0) -> float:
    """Seconds from now to the window's first slot so that every update lands before its slot.

    The updates go out in slot order, ``instances / width`` per minute of the window. With ``t`` the
    seconds one minute's updates take at ``updates_per_s``, slot ``k`` (``k * 60`` s after the
    first) gets its last update ``(k + 1) * t`` after the start: the lead must cover
    ``t + k * (t - 60)`` for every ``k``. Doubled (the rate was measured on activations, under a
    shared machine's varying load), and never under ``minimum``.
    """
    if updates_per_s <= 0:
        raise ValueError("updates_per_s must be positive")
    per_minute = math.ceil(instances / width_minutes)
    t = per_minute / updates_per_s
    need = t + max(0.0, (width_minutes - 1) * (t - 60.0))
    return max(minimum, 2.0 * need + 30.0)


ROWS_WRITTEN_SQL = """
SELECT schemaname, sum(n_tup_ins + n_tup_upd + n_tup_del)::bigint AS rows
FROM pg_stat_user_tables GROUP BY schemaname
"""


def rows_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Rows written per schema between two ``ROWS_WRITTEN_SQL`` snapshots (statistics lag ~0.5 s)."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))}
