"""What the console shows, as plain functions: labels, sizes, times in the user's zone, the next
backup time rules, and the restore preview's filter. No web framework here."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp
from strongroom.common.v1 import common_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_platform.manifest import selected as selected  # re-exported: the gateway's restore rule
from strongroom_platform.manifest import under as under
from strongroom_zones import parse_zone, zone_name
from strongroom_zones.display import minute_of_day as minute_of_day  # re-exported: callers use this module's name
from strongroom_zones.display import size as size

DEFAULT_ZONE = "UTC+08:00"

# The seed's backup running statuses, and a tone for the badge.
RUNNING_STATUS: dict[int, tuple[str, str]] = {
    scheduler_pb2.RUNNING_STATUS_NOT_ACTIVATED: ("Not Activated", "muted"),
    scheduler_pb2.RUNNING_STATUS_PREPARING: ("Preparing", "info"),
    scheduler_pb2.RUNNING_STATUS_PREPARATION_FAILED: ("Preparation Failed", "bad"),
    scheduler_pb2.RUNNING_STATUS_READY: ("Ready", "info"),
    scheduler_pb2.RUNNING_STATUS_RUNNING: ("Running", "good"),
    scheduler_pb2.RUNNING_STATUS_BACKING_UP: ("Running (Backing Up)", "good"),
    scheduler_pb2.RUNNING_STATUS_PAUSED: ("Paused", "warn"),
    scheduler_pb2.RUNNING_STATUS_STOPPED: ("Stopped", "muted"),
    scheduler_pb2.RUNNING_STATUS_CANCELED: ("Canceled", "muted"),
}
STATUS_FILTERS = {label: value for value, (label, _) in RUNNING_STATUS.items()}

JOB_STATUS: dict[int, tuple[str, str]] = {
    common_pb2.JOB_STATUS_CREATED: ("Created", "info"),
    common_pb2.JOB_STATUS_QUEUED: ("Queued", "info"),
    common_pb2.JOB_STATUS_RUNNING: ("Running", "info"),
    common_pb2.JOB_STATUS_COMPLETE: ("Complete", "good"),
    common_pb2.JOB_STATUS_PARTIAL_COMPLETE: ("Partially Complete", "warn"),
    common_pb2.JOB_STATUS_FAILED: ("Failed", "bad"),
    common_pb2.JOB_STATUS_CANCELING: ("Canceling", "warn"),
    common_pb2.JOB_STATUS_CANCELED: ("Canceled", "muted"),
    common_pb2.JOB_STATUS_EXPIRED: ("Expired", "muted"),
}
ACTIVE_JOBS = frozenset(
    {
        common_pb2.JOB_STATUS_CREATED,
        common_pb2.JOB_STATUS_QUEUED,
        common_pb2.JOB_STATUS_RUNNING,
        common_pb2.JOB_STATUS_CANCELING,
    }
)

NEXT_BACKUP_RULES = (
    "Only the time of day can be changed, not the date. If today's backup has not run and the new time is "
    "later than now, today's and every later backup run at the new time. If the new time is earlier than now, "
    "today's backup is skipped. If today's backup already ran, later backups run at the new time."
)


def zone_or_default(text: str | None) -> dt.tzinfo:
    """The zone the user chose (a cookie), else the seed's UTC+8; a bad value falls back too."""
    try:
        return parse_zone(text or DEFAULT_ZONE)
    except ValueError:
        return parse_zone(DEFAULT_ZONE)


def zone_label(zone: dt.tzinfo) -> str:
    return zone_name(zone)


def when(ts: Timestamp | None, zone: dt.tzinfo) -> str:
    """``2026-12-06 18:04:05`` in ``zone``; an unset timestamp is a dash."""
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return "—"
    return ts.ToDatetime(tzinfo=dt.UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def when_ns(mtime_ns: int, zone: dt.tzinfo) -> str:
    return dt.datetime.fromtimestamp(mtime_ns / 1e9, tz=dt.UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def parse_minute_of_day(text: str) -> int:
    """``HH:MM`` → minutes after midnight; ValueError with what is expected otherwise."""
    hours, sep, minutes = text.strip().partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit() or not (0 <= int(hours) < 24 and 0 <= int(minutes) < 60):
        raise ValueError(f"the start time must be HH:MM between 00:00 and 23:59, not {text!r}")
    return int(hours) * 60 + int(minutes)


def running_status(status: int) -> tuple[str, str]:
    return RUNNING_STATUS.get(status, ("Unknown", "muted"))


def job_status(status: int) -> tuple[str, str]:
    return JOB_STATUS.get(status, ("Unknown", "muted"))


def priority(value: int) -> str:
    return "High" if value == common_pb2.BACKUP_PRIORITY_HIGH else "Low"


def progress(stats: common_pb2.JobStats) -> int | None:
    """Percent of the scanned bytes already read or found unchanged; None before the scan counted any."""
    if stats.bytes_scanned == 0:
        return None
    done = stats.bytes_read + stats.bytes_unchanged + stats.bytes_restored
    return min(100, int(100 * done / stats.bytes_scanned))


def split_paths(text: str) -> list[str]:
    """One point-relative path a line (or comma-separated), without empty ones or outer slashes."""
    parts = (piece.strip().strip("/") for line in text.splitlines() for piece in line.split(","))
    return [p for p in parts if p]


def parent(path: str) -> str:
    return path.rpartition("/")[0]


def breadcrumbs(path: str) -> list[tuple[str, str]]:
    """(name, path) from the root to ``path``: ``a/b`` → [("/", ""), ("a", "a"), ("b", "a/b")]."""
    crumbs = [("/", "")]
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        crumbs.append((part, "/".join(parts[: i + 1])))
    return crumbs
