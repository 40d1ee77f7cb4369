"""`make images`: build the services and agent OCI images into build/images (ADR 0044).

Usage: python tools/images/build.py [--out DIR] [--only services|agent]

Needs root, mmdebstrap and umoci (installed with apt-get when missing and running as root), and
/usr/bin/python3.11 from Debian bookworm. Prints each image's compressed size and build time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from strongroom_servers import PrerequisiteMissing, ServerStartError
from strongroom_servers.images import IMAGES, build_images

REPO = Path(__file__).resolve().parents[2]


def _install_tools() -> None:
    missing = [tool for tool in ("mmdebstrap", "umoci") if shutil.which(tool) is None]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "images")
    parser.add_argument("--only", choices=[spec.name for spec in IMAGES], action="append")
    args = parser.parse_args()
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    specs = [spec for spec in IMAGES if not args.only or spec.name in args.only]
    started = time.monotonic()
    try:
        _install_tools()
        build_images(REPO, args.out, version, specs)
    except (PrerequisiteMissing, ServerStartError, subprocess.CalledProcessError) as exc:
        print(f"make images: {exc}", file=sys.stderr)
        return 1
    print(f"images built in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
