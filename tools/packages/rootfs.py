"""A clean Debian root filesystem (tarball) for the package test, built once with mmdebstrap (ADR 0045).

    uv run python tools/packages/rootfs.py      # prints the tarball's path

Debian bookworm, variant ``apt``, plus ``python3.11`` (the package's interpreter), ``systemd``
(its unit directory, for ``systemd-analyze verify --root``, and ``systemctl enable`` offline) and
``curl`` (the install-and-enroll command fetches the repository key with it).
Cached as ``debian-bookworm-agent-rootfs-<hash of the package list>.tar`` under
``~/.cache/strongroom``; mmdebstrap uses the host's apt configuration for the mirror, and is
installed with apt-get when missing (root).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from build import BuildError, ensure_tool, run
from strongroom_servers import cache_root
from strongroom_servers._process import file_lock

SUITE = "bookworm"
INCLUDE = ("python3.11", "systemd", "curl")
TARBALL = f"debian-{SUITE}-agent-rootfs-{hashlib.sha256(','.join(INCLUDE).encode()).hexdigest()[:8]}.tar"


def ensure_rootfs() -> Path:
    """The cached tarball, built on first use."""
    tarball = cache_root() / TARBALL
    if tarball.is_file():
        return tarball
    mmdebstrap = ensure_tool("mmdebstrap")
    with file_lock(cache_root() / f"{TARBALL}.lock"):
        if tarball.is_file():
            return tarball
        partial = tarball.with_suffix(".partial.tar")
        partial.unlink(missing_ok=True)
        # Snapshot mirrors serve Release files past their Valid-Until date.
        run(
            [
                mmdebstrap,
                "--quiet",
                "--variant=apt",
                f"--include={','.join(INCLUDE)}",
                '--aptopt=Acquire::Check-Valid-Until "false"',
                SUITE,
                str(partial),
            ]
        )
        os.replace(partial, tarball)
    return tarball


def main() -> int:
    try:
        print(ensure_rootfs())
    except BuildError as exc:
        print(f"rootfs.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
