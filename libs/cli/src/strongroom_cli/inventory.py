"""``strongroom inventory ...`` (hosts known before activation, ADR 0040) and ``strongroom holds ...``
(incident and legal holds on an instance's versions).

``inventory import FILE`` reads CSV (a header line naming the columns ``host_id``, ``name``,
``region``, ``os``, ``block_devices``, ``released``) or JSON lines (one object per line with the same
keys, ``block_devices`` a list of ``{"device": ..., "size_bytes": ...}``). In CSV, block devices are
``DEVICE=SIZE`` separated by ``;`` with SIZE in bytes or with a ``K``/``M``/``G``/``T`` (binary) suffix.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
from collections.abc import Awaitable, Iterator, Sequence
from pathlib import Path

from strongroom.catalog.v1 import catalog_pb2
from strongroom.common.v1 import common_pb2
from strongroom.scheduler.v1 import scheduler_pb2

from strongroom_cli import output
from strongroom_cli.context import Context, UsageError
from strongroom_cli.instances import DEFAULT_REGION, print_instance, print_instances
from strongroom_cli.pages import every_page

BATCH = 1000  # records per RegisterInstances call (the server's limit)
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_TRUE = {"1", "true", "yes", "y", "released"}
_FALSE = {"", "0", "false", "no", "n"}
HOLD_KINDS = {"incident": catalog_pb2.HOLD_KIND_INCIDENT, "legal": catalog_pb2.HOLD_KIND_LEGAL}


def parse_size(text: str) -> int:
    """``40G`` / ``40GiB`` / ``1048576`` → bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"size {text!r} is not a number of bytes or a number with K, M, G or T")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def parse_device(text: str) -> common_pb2.BlockDevice:
    """``/dev/vda=40G`` → a block device."""
    device, sep, size = text.partition("=")
    if not sep or not device.strip():
        raise ValueError(f"block device {text!r} is not DEVICE=SIZE (e.g. /dev/vda=40G)")
    return common_pb2.BlockDevice(device=device.strip(), size_bytes=parse_size(size))


def _flag(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{where}: released must be true or false, got {value!r}")


def _record(values: dict[str, object], where: str) -> scheduler_pb2.InventoryRecord:
    unknown = sorted(set(values) - {"host_id", "name", "region", "os", "block_devices", "released"})
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    raw_devices = values.get("block_devices") or []
    devices: list[common_pb2.BlockDevice] = []
    if isinstance(raw_devices, str):
        devices = [parse_device(d) for d in raw_devices.split(";") if d.strip()]
    elif isinstance(raw_devices, list):
        for d in raw_devices:
            if not isinstance(d, dict) or not isinstance(d.get("size_bytes"), int):
                raise ValueError(f'{where}: block_devices entries are {{"device": ..., "size_bytes": N}}')
            devices.append(common_pb2.BlockDevice(device=str(d.get("device", "")), size_bytes=d["size_bytes"]))
    else:
        raise ValueError(f"{where}: block_devices must be a list or DEVICE=SIZE;...")
    return scheduler_pb2.InventoryRecord(
        host_id=str(values.get("host_id") or ""),
        name=str(values.get("name") or ""),
        region=str(values.get("region") or ""),
        os=str(values.get("os") or ""),
        block_devices=devices,
        released=_flag(values.get("released", False), where),
    )


def read_records(text: str) -> list[scheduler_pb2.InventoryRecord]:
    """Inventory records of a CSV or JSON-lines file (JSON lines when the first non-blank character is ``{``)."""
    stripped = text.lstrip()
    records: list[scheduler_pb2.InventoryRecord] = []
    if stripped.startswith("{"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                values = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {n}: not JSON ({exc.msg})") from None
            if not isinstance(values, dict):
                raise ValueError(f"line {n}: not a JSON object")
            records.append(_record(values, f"line {n}"))
        return records
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "host_id" not in reader.fieldnames:
        raise ValueError("the CSV file needs a header line naming at least host_id")
    for row in reader:
        records.append(_record({k: v for k, v in row.items() if k is not None}, f"line {reader.line_num}"))
    return records


def _batches(records: Sequence[scheduler_pb2.InventoryRecord]) -> Iterator[Sequence[scheduler_pb2.InventoryRecord]]:
    for start in range(0, len(records), BATCH):
        yield records[start : start + BATCH]


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = groups.add_parser("inventory", help="hosts known before activation (register, import a file)")
    commands = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = commands.add_parser("register", parents=[common], help="register (or update) one host")
    p.add_argument("host_id", metavar="HOST_ID", help="stable host identity (cloud instance id or machine-id)")
    p.add_argument("--name", default="", help="display name (default: the host id)")
    p.add_argument("--region", default=DEFAULT_REGION, help=f"region label (default {DEFAULT_REGION})")
    p.add_argument("--os", default="", help="operating system, e.g. linux")
    p.add_argument("--disk", action="append", default=[], metavar="DEVICE=SIZE", help="attached block device (repeat)")
    p.add_argument("--released", action="store_true", help="the host is gone (its instance becomes Stopped)")
    p.set_defaults(command=register_one)
    p = commands.add_parser("import", parents=[common], help="register hosts from a CSV or JSON-lines file")
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(command=import_file)

    group = groups.add_parser("holds", help="incident and legal holds on an instance's versions")
    commands = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = commands.add_parser("place", parents=[common], help="hold every version of an instance until released")
    p.add_argument("instance_id", metavar="ID")
    p.add_argument("--kind", choices=sorted(HOLD_KINDS), default="incident")
    p.add_argument("--reason", required=True, help="why (incident ticket, case number)")
    p.set_defaults(command=place_hold)
    p = commands.add_parser("release", parents=[common], help="release a hold")
    p.add_argument("hold_id", metavar="HOLD_ID")
    p.set_defaults(command=release_hold)
    p = commands.add_parser("list", parents=[common], help="holds of an instance")
    p.add_argument("instance_id", metavar="ID")
    p.add_argument("--all", action="store_true", help="released ones too")
    p.set_defaults(command=list_holds)


async def _send(context: Context, records: Sequence[scheduler_pb2.InventoryRecord]) -> list[scheduler_pb2.Instance]:
    found: list[scheduler_pb2.Instance] = []
    for batch in _batches(records):
        request = scheduler_pb2.RegisterInstancesRequest(account_id=context.account_id, instances=batch)
        found += (await context.scheduler().RegisterInstances(request, **context.call)).instances
    return found


async def register_one(context: Context) -> int:
    args = context.args
    try:
        devices = [parse_device(d) for d in args.disk]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    record = scheduler_pb2.InventoryRecord(
        host_id=args.host_id,
        name=args.name,
        region=args.region,
        os=args.os,
        block_devices=devices,
        released=args.released,
    )
    [instance] = await _send(context, [record])
    print_instance(context, instance)
    return 0


async def import_file(context: Context) -> int:
    path: Path = context.args.file
    try:
        records = read_records(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: {exc}") from None
    if not records:
        raise UsageError(f"{path} holds no inventory records")
    print_instances(context, await _send(context, records))
    return 0


def print_hold(context: Context, hold: catalog_pb2.Hold) -> None:
    if context.json:
        output.as_json(hold)
        return
    output.fields(
        [
            ("Hold", hold.hold_id),
            ("Instance", hold.instance_id),
            ("Kind", output.enum_name(catalog_pb2.HoldKind.Name(hold.kind), "HOLD_KIND_")),
            ("Reason", hold.reason),
            ("Placed", f"{output.timestamp(hold.placed_at)} by {hold.placed_by}"),
            (
                "Released",
                f"{output.timestamp(hold.released_at)} by {hold.released_by}"
                if hold.HasField("released_at")
                else "- (active: the instance's versions do not expire)",
            ),
        ]
    )


async def place_hold(context: Context) -> int:
    args = context.args
    request = catalog_pb2.PlaceHoldRequest(instance_id=args.instance_id, kind=HOLD_KINDS[args.kind], reason=args.reason)
    print_hold(context, await context.catalog().PlaceHold(request, **context.call))
    return 0


async def release_hold(context: Context) -> int:
    request = catalog_pb2.ReleaseHoldRequest(hold_id=context.args.hold_id)
    print_hold(context, await context.catalog().ReleaseHold(request, **context.call))
    return 0


async def list_holds(context: Context) -> int:
    def fetch(token: str, size: int) -> Awaitable[catalog_pb2.ListHoldsResponse]:
        request = catalog_pb2.ListHoldsRequest(
            instance_id=context.args.instance_id, include_released=context.args.all, page_size=size, page_token=token
        )
        return context.catalog().ListHolds(request, **context.call)

    holds = await every_page(fetch, lambda page: page.holds)
    if context.json:
        output.as_json(holds)
        return 0
    rows = [
        [
            h.hold_id,
            output.enum_name(catalog_pb2.HoldKind.Name(h.kind), "HOLD_KIND_"),
            output.timestamp(h.placed_at),
            output.timestamp(h.released_at, present=h.HasField("released_at")),
            h.reason,
        ]
        for h in holds
    ]
    output.table(["HOLD", "KIND", "PLACED", "RELEASED", "REASON"], rows)
    return 0
