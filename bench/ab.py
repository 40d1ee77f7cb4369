"""Before/after in one invocation: the full and no-change backup of two checkouts, alternating.

    uv run python bench/ab.py --base REV [--rounds 3] [--quick] [--work DIR] [--after-env KEY=VALUE ...]
    uv run python bench/ab.py --base REV --variant NAME:KEY=VALUE [--variant NAME2:KEY=VALUE ...]

Builds (or reuses) the benchmark data set, checks ``REV`` out into a temporary worktree with its
own environment (``make sync``), then runs ``bench/full_backup_once.py`` from the base checkout
and from this one in turn, ``--rounds`` times each (ABAB...), each round on a fresh stack and a
fresh account. Prints the medians and the after/base ratios. The worktree is removed at the end.
Used for issue 8's budget: TLS and authorization may cost at most 5% of full-backup wall time,
and for issue 11's tracing overhead (``--after-env STRONGROOM_OTEL=file:DIR``: the after side's
processes export every span; ``{work}`` in a value is replaced by the work directory).
``--variant NAME:KEY=VALUE`` (repeatable; a NAME given again adds to its environment) replaces the
one after side by one side per NAME, each this checkout with its own environment, all interleaved
with the base in every round (base, A, B, ...): for instance the agent's allocator settings,
``--variant trim:BENCH_AGENT_ENV_BENCH_MALLOC=trim_threshold=134217728`` (``bench/_agent.py``, ADR 0077).
Each variant gets its own table against the base.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
from _variants import parse_variants  # noqa: E402


def run_side(
    checkout: Path, data: Path, work: Path, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()
) -> dict[str, list[float]]:
    python = checkout / ".venv" / "bin" / "python"
    script = checkout / "bench" / "full_backup_once.py"
    if work.exists():
        shutil.rmtree(work)
    done = subprocess.run(
        [str(python), str(script), "--data", str(data), "--work", str(work), *extra],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: exit {done.returncode}\n{done.stderr[-4000:]}")
    result: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the small data subset")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "strongroom-ab")
    parser.add_argument(
        "--after-env", action="append", default=[], metavar="KEY=VALUE", help="environment of the after side only"
    )
    parser.add_argument("--s3-tls", action="store_true", help="S3 over HTTPS, as run.py --s3-tls")
    parser.add_argument("--nochange", type=int, default=1, help="no-change backups after each full backup")
    parser.add_argument("--data", type=Path, help="an existing day-1 tree (default: build one under --work)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="a side of this checkout with this environment (repeatable; replaces the after side)",
    )
    args = parser.parse_args()
    work: Path = args.work
    extra = ("--nochange", str(args.nochange), *(("--s3-tls",) if args.s3_tls else ()))
    after_env = dict(item.split("=", 1) for item in args.after_env)
    after_env = {key: value.replace("{work}", str(work)) for key, value in after_env.items()}
    # Sides of this checkout and their environments (the base side runs with the caller's own).
    try:
        envs = parse_variants(args.variant)
    except ValueError as exc:
        parser.error(str(exc))
    if "base" in envs:
        parser.error("--variant base:...: 'base' names the base revision's side")
    envs = {name: {key: value.replace("{work}", str(work)) for key, value in env.items()} for name, env in envs.items()}
    if not envs:
        envs = {"after": after_env}
    data = args.data or dataset.day1_tree(work, quick=args.quick)
    base = work / "base-checkout"
    if base.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True)
    try:
        shutil.copy(HERE / "full_backup_once.py", base / "bench" / "full_backup_once.py")
        subprocess.run(["make", "sync"], cwd=base, check=True, stdout=subprocess.DEVNULL)
        sides = {"base": base, **{name: ROOT for name in envs}}
        results: dict[str, dict[str, list[float]]] = {name: {} for name in sides}
        for round_no in range(args.rounds):
            for name, checkout in sides.items():
                started = time.strftime("%H:%M:%S")
                one = run_side(checkout, data, work / f"run-{name}", envs.get(name), extra)
                for metric, values in one.items():
                    results[name].setdefault(metric, []).extend(values)
                print(f"[{started}] round {round_no + 1} {name}: {json.dumps(one)}", file=sys.stderr, flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    for name, env in envs.items():
        with_env = f" (with {', '.join(f'{k}={v}' for k, v in env.items())})" if env else ""
        print(
            f"A/B: base {args.base} vs {name} {head.strip()}{with_env}, {args.rounds} rounds each, "
            f"alternating ({', '.join(sides)}); data {data.name}"
        )
        print(f"| metric | base (median) | {name} (median) | {name}/base | all base | all {name} |")
        print("|---|---:|---:|---:|---|---|")
        metrics = ("full_s", "nochange_s", "cpu_s", "agent_cpu_s", "agent_user_s", "agent_sys_s", "gateway_cpu_s")
        extra = ("postgres_cpu_s", "pg_commits_k", "agent_peak_rss_mb", "full_load", "stored_mb")
        extra += ("nochange_agent_cpu_s", "nochange_gateway_cpu_s", "nochange_agent_peak_rss_mb", "nochange_load")
        for metric in (*metrics, *extra, "agent_minflt_k", "gateway_minflt_k"):
            b, a = results["base"].get(metric, []), results[name].get(metric, [])
            if not b or not a:
                continue
            mb, ma = statistics.median(b), statistics.median(a)
            print(
                f"| {metric} | {mb:.2f} | {ma:.2f} | {ma / mb:.3f} | "
                f"{', '.join(f'{v:.2f}' for v in b)} | {', '.join(f'{v:.2f}' for v in a)} |"
            )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
