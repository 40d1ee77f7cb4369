"""``strongroom audit list``: the audit trail of an account (admins; ADR 0027)."""

from __future__ import annotations

import argparse
import datetime as dt
import re

from google.protobuf.timestamp_pb2 import Timestamp
from strongroom.audit.v1 import audit_pb2

from strongroom_cli import output
from strongroom_cli.context import Context, UsageError

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = groups.add_parser("audit", help="the audit trail: who changed what (admins)")
    commands = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = commands.add_parser("list", parents=[common], help="audit records of the account, newest first")
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="from WHEN: 2026-12-01, 2026-12-01T08:00 (UTC unless an offset is given), or an age such as 30m, 24h, 7d",
    )
    p.add_argument("--until", metavar="WHEN", help="before WHEN (same forms)")
    p.add_argument("--subject", help="only calls of this subject (token:<id>, oidc:<issuer>#<sub>)")
    p.add_argument("--limit", type=int, default=100, help="at most this many records (default 100)")
    p.set_defaults(command=list_events)


def parse_when(text: str, now: dt.datetime) -> dt.datetime:
    """An absolute time (ISO 8601; UTC when it names no offset) or an age before ``now``."""
    ago = _AGO.match(text.strip())
    if ago:
        return now - dt.timedelta(**{_UNITS[ago.group(2)]: int(ago.group(1))})
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"cannot read {text!r} as a time: use 2026-12-01, 2026-12-01T08:00 or an age (24h, 7d)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _timestamp(when: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when.astimezone(dt.UTC))
    return stamp


async def list_events(context: Context) -> int:
    args = context.args
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    now = dt.datetime.now(dt.UTC)
    request = audit_pb2.ListAuditEventsRequest(account_id=context.account_id, subject=args.subject or "")
    if args.since:
        request.since.CopyFrom(_timestamp(parse_when(args.since, now)))
    if args.until:
        request.until.CopyFrom(_timestamp(parse_when(args.until, now)))
    events: list[audit_pb2.AuditEvent] = []
    while len(events) < args.limit:
        request.page_size = min(args.limit - len(events), 1000)
        page = await context.audit().ListAuditEvents(request, **context.call)
        events += page.events
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if context.json:
        output.as_json(events)
        return 0
    rows = [
        [
            output.timestamp(e.occurred_at),
            e.subject,
            e.verb or e.method.rsplit("/", 1)[-1],
            " ".join(f"{k}={v}" for k, v in sorted(e.resources.items())),
            e.result_code if e.result_code == "OK" else f"{e.result_code}: {e.result_message}",
        ]
        for e in events
    ]
    output.table(["WHEN", "WHO", "WHAT", "RESOURCES", "RESULT"], rows)
    return 0
