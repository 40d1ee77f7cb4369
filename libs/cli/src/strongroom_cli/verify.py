"""``strongroom verify ...``: ask the gateway to verify stored backups, follow it, read recoverability (ADR 0033).

The verification runs in the gateway (it holds the packs and the keys); the CLI only starts it
and polls it.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable

from strongroom.gateway.v1 import verify_pb2

from strongroom_cli import output
from strongroom_cli.context import Context
from strongroom_cli.pages import every_page
from strongroom_cli.restores import printable

FINISHED = frozenset(
    {
        verify_pb2.VERIFICATION_STATE_CLEAN,
        verify_pb2.VERIFICATION_STATE_DAMAGED,
        verify_pb2.VERIFICATION_STATE_FAILED,
    }
)


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = groups.add_parser(
        "verify", help="verify stored backups: every pack read back, decrypted, every chunk hashed"
    )
    commands = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (
        ("point", "verify one backup point"),
        ("instance", "verify every point of an instance"),
        ("account", "verify every point of the account"),
    ):
        p = commands.add_parser(name, parents=[common], help=text)
        if name != "account":
            p.add_argument("target", metavar="POINT_ID" if name == "point" else "INSTANCE_ID")
        p.add_argument(
            "--wait", action="store_true", help="follow it until it finishes; exit 1 if damage was found or it failed"
        )
        p.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)
        p.set_defaults(command=start, scope=name)

    p = commands.add_parser("show", parents=[common], help="show a verification and the damaged files it found")
    p.add_argument("verification_id", metavar="ID")
    p.set_defaults(command=show)

    p = commands.add_parser("list", parents=[common], help="the newest verifications")
    p.add_argument("--instance", default="", metavar="ID", help="only those of this instance")
    p.add_argument("--limit", type=int, default=20, help="at most this many, newest first (default 20; 0 = all)")
    p.set_defaults(command=list_verifications)

    p = commands.add_parser("status", parents=[common], help="recoverability of each instance")
    p.add_argument("instance_id", nargs="?", default="", metavar="INSTANCE_ID")
    p.set_defaults(command=status)


def state_name(state: verify_pb2.VerificationState.ValueType) -> str:
    return output.enum_name(verify_pb2.VerificationState.Name(state), "VERIFICATION_STATE_")


def scope_name(scope: verify_pb2.VerificationScope.ValueType) -> str:
    return output.enum_name(verify_pb2.VerificationScope.Name(scope), "VERIFICATION_SCOPE_")


def print_verification(context: Context, v: verify_pb2.Verification) -> None:
    if context.json:
        output.as_json(v)
        return
    output.fields(
        [
            ("Verification", v.verification_id),
            ("State", state_name(v.state)),
            ("Scope", f"{scope_name(v.scope)} {v.target_id}".rstrip()),
            ("Points", f"{v.points_done} of {v.points_total}"),
            ("Packs read", f"{v.packs_checked}, {output.size(v.bytes_read)}"),
            ("Damaged files", str(v.damaged_files_count)),
            ("Damaged packs", str(v.damaged_packs_count)),
            ("Created", output.timestamp(v.created_at)),
            ("Finished", output.timestamp(v.finished_at, present=v.HasField("finished_at"))),
            ("Error", v.error or "-"),
        ]
    )
    if v.damaged_files:
        print("Damaged files:")
        for f in v.damaged_files:
            path = printable(f.path) if f.path else "(every file of the point)"
            print(f"  {f.point_id}  {path}: {printable(f.reason)}")
        more = v.damaged_files_count - len(v.damaged_files)
        if more > 0:
            print(f"  ... and {more} more (only the first {len(v.damaged_files)} are kept)")
    if v.damaged_packs:
        print("Damaged packs:")
        for k in v.damaged_packs:
            print(f"  {k.pack_id}: {printable(k.reason)}")


async def start(context: Context) -> int:
    args = context.args
    request = verify_pb2.StartVerificationRequest(account_id=context.account_id)
    if args.scope == "point":
        request.point_id = args.target
    elif args.scope == "instance":
        request.instance_id = args.target
    else:
        request.whole_account = True
    stub = context.verify()
    verification = await stub.StartVerification(request, **context.call)
    if args.wait:
        if not context.json:
            print(f"verification {verification.verification_id} queued; waiting for it to finish ...", flush=True)
        while verification.state not in FINISHED:
            await asyncio.sleep(args.poll_interval)
            verification = await stub.GetVerification(
                verify_pb2.GetVerificationRequest(verification_id=verification.verification_id), **context.call
            )
    print_verification(context, verification)
    failed = {verify_pb2.VERIFICATION_STATE_DAMAGED, verify_pb2.VERIFICATION_STATE_FAILED}
    return 1 if args.wait and verification.state in failed else 0


async def show(context: Context) -> int:
    request = verify_pb2.GetVerificationRequest(verification_id=context.args.verification_id)
    print_verification(context, await context.verify().GetVerification(request, **context.call))
    return 0


async def list_verifications(context: Context) -> int:
    def fetch(token: str, size: int) -> Awaitable[verify_pb2.ListVerificationsResponse]:
        request = verify_pb2.ListVerificationsRequest(
            account_id=context.account_id, instance_id=context.args.instance, page_size=size, page_token=token
        )
        return context.verify().ListVerifications(request, **context.call)

    verifications = await every_page(fetch, lambda page: page.verifications, limit=max(context.args.limit, 0))
    if context.json:
        output.as_json(verifications)
        return 0
    rows = [
        [
            v.verification_id,
            state_name(v.state),
            f"{scope_name(v.scope)} {v.target_id}".rstrip(),
            f"{v.points_done}/{v.points_total}",
            str(v.damaged_files_count),
            output.timestamp(v.created_at),
        ]
        for v in verifications
    ]
    output.table(
        ["VERIFICATION", "STATE", "SCOPE", "POINTS", "DAMAGED FILES", f"CREATED ({output.zone_label()})"], rows
    )
    return 0


async def status(context: Context) -> int:
    request = verify_pb2.GetRecoverabilityRequest(account_id=context.account_id, instance_id=context.args.instance_id)
    response = await context.verify().GetRecoverability(request, **context.call)
    if context.json:
        output.as_json(list(response.instances))
        return 0
    rows = [
        [
            r.instance_id,
            r.last_verified_point_id or "-",
            output.timestamp(r.last_verified_point_created_at, present=r.HasField("last_verified_point_created_at")),
            output.timestamp(r.last_verified_at, present=r.HasField("last_verified_at")),
            str(r.damaged_files),
            str(r.damaged_points),
        ]
        for r in response.instances
    ]
    output.table(
        [
            "INSTANCE",
            "LAST VERIFIED POINT",
            "POINT TAKEN",
            f"VERIFIED ({output.zone_label()})",
            "DAMAGED FILES",
            "DAMAGED POINTS",
        ],
        rows,
    )
    return 0
