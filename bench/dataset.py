"""Benchmark data sets: a real source tree, large generated files, a reproducible day-2 change.

    uv run python bench/dataset.py build DIR [--quick]       # day-1 tree (pristine copy)
    uv run python bench/dataset.py day2 DIR                  # mutate DIR in place (day 2)
    uv run python bench/dataset.py scale DIR --scale-small N  # N small generated files

Day 1 = ``src/`` (the Linux kernel source from Debian's ``linux-source-<ver>`` package: tens of
thousands of real files) + ``big/`` (random binary, compressible log and mixed files).

The tarball comes from ``apt-get download`` (no root install; cached under
``${STRONGROOM_CACHE:-~/.cache/strongroom}/bench/``); the version is whatever ``apt-cache policy``
offers as candidate for ``linux-source-6.1`` (else ``linux-source``). Everything generated uses a
fixed seed, so two builds are byte-identical.

Day 2 (``day2``): about 1% of the source files change — a quarter appended, a quarter edited in the
middle (same size), a quarter deleted, and as many new files added — and 4 KiB is inserted near the
start of every large file except one binary (tests chunk-boundary shift; the untouched one tests
skipping unchanged large files). A changed file is always written as a new file and renamed over
the old path, never modified in place, so a hard-linked copy of the day-1 tree (``cp -al``, which
the benchmark uses for a fresh working copy per run) stays pristine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

SEED = 20261124
MiB = 1 << 20
FIXED_MTIME_NS = 1_700_000_000_000_000_000  # every generated file gets this mtime (reproducible trees)


def cache_dir() -> Path:
    base = os.environ.get("STRONGROOM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "strongroom"
    )
    path = Path(base) / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- the real source tree


def _candidate(package: str) -> str | None:
    try:
        out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Candidate:"):
            value = line.split(":", 1)[1].strip()
            return None if value in ("", "(none)") else value
    return None


def source_tarball() -> tuple[Path, str]:
    """Download (once) the linux-source .deb and return its kernel tarball and a description."""
    for package in ("linux-source-6.1", "linux-source"):
        version = _candidate(package)
        if version:
            break
    else:
        raise SystemExit("no linux-source package offered by apt-cache policy (run apt-get update first)")
    where = cache_dir() / f"{package}_{version}"
    done = where / ".complete"
    if not done.exists():
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=where, check=True)
        [deb] = list(where.glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(where / "x")], check=True)
        deb.unlink()
        done.write_text(version)
    [tarball] = list((where / "x" / "usr" / "src").glob("linux-source-*.tar.*"))
    return tarball, f"Debian {package} {version}"


def extract_source(dest: Path, *, quick: bool) -> str:
    tarball, what = source_tarball()
    dest.mkdir(parents=True, exist_ok=True)
    if quick:
        # A small real subset: the first ~3000 regular files of a few subsystems.
        wanted = ("/fs/ext4/", "/fs/btrfs/", "/net/ipv4/", "/drivers/net/ethernet/intel/", "/kernel/", "/mm/")
        with tarfile.open(tarball) as tar:
            count = 0
            for member in tar:
                if member.isfile() and any(w in member.name for w in wanted):
                    tar.extract(member, dest, filter="data")
                    count += 1
        return f"{what} (quick subset: {count} files)"
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(dest)], check=True)
    return what


# ---------------------------------------------------------------- generated files


def _prng_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def _write(path: Path, chunks) -> None:  # noqa: ANN001 - an iterable of bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    os.utime(path, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))


def _binary(rng: random.Random, size: int):  # noqa: ANN202
    left = size
    while left:
        n = min(left, 4 * MiB)
        yield _prng_bytes(rng, n)
        left -= n


_WORDS = (
    b"GET POST PUT DELETE /api/v1/users /api/v1/orders /static/app.js /healthz INFO WARN ERROR DEBUG "
    b"request completed served cache miss hit upstream timeout retry backend db query slow user session "
    b"token refreshed checkout payment accepted declined 200 201 204 301 404 500 503"
).split()


def _log(rng: random.Random, size: int):  # noqa: ANN202
    """Compressible text: timestamped log lines from a small vocabulary (zstd ~6-10x)."""
    written = 0
    t = 1_700_000_000
    buf: list[bytes] = []
    pending = 0
    while written < size:
        t += rng.randint(0, 3)
        words = b" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
        line = b"%d host-%02d app[%d]: req=%016x %s\n" % (
            t,
            rng.randint(1, 40),
            rng.randint(1000, 9999),
            rng.getrandbits(64),
            words,
        )
        buf.append(line)
        pending += len(line)
        written += len(line)
        if pending >= MiB:
            yield b"".join(buf)
            buf, pending = [], 0
    if buf:
        yield b"".join(buf)


def _mixed(rng: random.Random, size: int):  # noqa: ANN202
    """Mixed compressibility: 64 KiB - 1 MiB blocks of random, log text, zeros, and repeats of earlier blocks."""
    written = 0
    earlier: list[bytes] = []
    log = _log(rng, 1 << 62)
    while written < size:
        n = min(rng.randint(64 << 10, MiB), size - written)
        kind = rng.random()
        if kind < 0.35:
            block = _prng_bytes(rng, n)
        elif kind < 0.7:
            block = next(log)[:n]
        elif kind < 0.8:
            block = bytes(n)
        elif earlier:
            block = rng.choice(earlier)
        else:
            block = _prng_bytes(rng, n)
        if len(earlier) < 64 and kind < 0.35:
            earlier.append(block)
        yield block
        written += len(block)


def big_files(quick: bool) -> list[tuple[str, str, int]]:
    """(relative path, kind, size)."""
    if quick:
        return [
            ("big/disk-a.img", "binary", 48 * MiB),
            ("big/disk-b.img", "binary", 16 * MiB),
            ("big/app.log", "log", 32 * MiB),
            ("big/mixed.dat", "mixed", 32 * MiB),
        ]
    return [
        ("big/disk-a.img", "binary", 384 * MiB),
        ("big/disk-b.img", "binary", 128 * MiB),
        ("big/logs/app.log", "log", 256 * MiB),
        ("big/logs/access.log", "log", 128 * MiB),
        ("big/mixed-a.dat", "mixed", 256 * MiB),
        ("big/mixed-b.dat", "mixed", 128 * MiB),
    ]


GENERATORS = {"binary": _binary, "log": _log, "mixed": _mixed}


def day1_tree(work: Path, *, quick: bool) -> Path:
    """The day-1 tree under ``work`` (``day1`` or ``day1-quick``), built on first use.

    The tree is built under a ``.partial`` name and renamed when complete, so one that exists
    is whole. Building it takes a few minutes (the source tarball is cached).
    """
    work.mkdir(parents=True, exist_ok=True)
    root = work / ("day1-quick" if quick else "day1")
    if not root.exists():
        print(f"building data set at {root}", file=sys.stderr, flush=True)
        build(root, quick=quick)
    return root


def build(root: Path, *, quick: bool) -> None:
    """Build the day-1 tree at ``root`` (must not exist)."""
    if root.exists():
        raise SystemExit(f"{root} exists")
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    what = extract_source(tmp / "src", quick=quick)
    for rel, kind, size in big_files(quick):
        rng = random.Random(f"{SEED}:{rel}")
        _write(tmp / rel, GENERATORS[kind](rng, size))
    (tmp / "DATASET").write_text(f"source: {what}\nquick: {quick}\nseed: {SEED}\n")
    tmp.rename(root)


# ---------------------------------------------------------------- day 2


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return out


def _replace(path: Path, data: bytes) -> None:
    """Write a new inode and rename it over ``path`` (keeps hard-linked day-1 copies intact)."""
    tmp = path.with_name(f".{path.name}.day2")
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)


def _insert_near_start(path: Path, rng: random.Random, offset: int = 1000, nbytes: int = 4096) -> None:
    tmp = path.with_name(f".{path.name}.day2")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        dst.write(src.read(offset))
        dst.write(_prng_bytes(rng, nbytes))
        shutil.copyfileobj(src, dst, 8 * MiB)
    os.replace(tmp, path)


def day2(root: Path, fraction: float = 0.01) -> dict[str, int]:
    """Apply the reproducible day-2 change to the tree at ``root``; return counts."""
    rng = random.Random(f"{SEED}:day2")
    files = _files(root / "src")
    picked = rng.sample(files, max(4, int(len(files) * fraction)))
    quarter = len(picked) // 4
    appended, edited, deleted = picked[:quarter], picked[quarter : 2 * quarter], picked[2 * quarter : 3 * quarter]
    added_count = len(picked) - 3 * quarter
    for p in appended:
        _replace(p, p.read_bytes() + b"\n/* day 2: appended line %d */\n" % rng.getrandbits(32))
    for p in edited:
        data = bytearray(p.read_bytes())
        if data:
            mid = len(data) // 2
            patch = rng.randbytes(min(64, len(data) - mid))
            data[mid : mid + len(patch)] = patch
        _replace(p, bytes(data))
    for p in deleted:
        p.unlink()
    dirs = sorted({p.parent for p in files})
    for i in range(added_count):
        d = rng.choice(dirs)
        d.mkdir(parents=True, exist_ok=True)
        text = b"".join(b"day two new file %d line %d\n" % (i, j) for j in range(rng.randint(5, 400)))
        (d / f"day2-new-{i:05d}.c").write_bytes(text)
    shifted = 0
    quick = "quick: True" in (root / "DATASET").read_text()
    for rel, _kind, _size in big_files(quick):
        if rel == "big/disk-b.img":
            continue  # one large file stays unchanged
        p = root / rel
        if p.exists():
            _insert_near_start(p, rng)
            shifted += 1
    return {
        "appended": len(appended),
        "edited": len(edited),
        "deleted": len(deleted),
        "added": added_count,
        "large_shifted": shifted,
    }


# ---------------------------------------------------------------- scale run


def scale(root: Path, count: int, per_dir: int = 1000) -> int:
    """``count`` small files (64 B - 4 KiB, partly duplicate content) in dirs of ``per_dir``; returns bytes."""
    rng = random.Random(f"{SEED}:scale")
    total = 0
    dirs = (count + per_dir - 1) // per_dir
    for d in range(dirs):
        directory = root / f"d{d // 100:03d}" / f"d{d:05d}"
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(min(per_dir, count - d * per_dir)):
            n = rng.randint(64, 4096)
            seed = hashlib.blake2b(b"%d" % (d * per_dir + i), digest_size=16).digest()
            body = (seed * (n // 16 + 1))[:n] if rng.random() < 0.5 else rng.randbytes(n)
            with open(directory / f"f{i:04d}.txt", "wb") as f:
                f.write(body)
            total += n
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir", type=Path)
    b.add_argument("--quick", action="store_true")
    d = sub.add_parser("day2")
    d.add_argument("dir", type=Path)
    s = sub.add_parser("scale")
    s.add_argument("dir", type=Path)
    s.add_argument("--scale-small", type=int, required=True, metavar="N")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        build(args.dir, quick=args.quick)
    elif args.cmd == "day2":
        print(day2(args.dir))
    else:
        print(f"{scale(args.dir, args.scale_small)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
