"""The two images for the deploy tests, built by ``make images``'s code once per source state."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import tomllib

import pytest
from deploy_tools import REPO
from strongroom_servers import PrerequisiteMissing, cache_root
from strongroom_servers.images import IMAGES, BuiltImage, build_images

__all__ = ["cached_images", "missing_prerequisite"]


def missing_prerequisite() -> str | None:
    """Why the images cannot be built (and the pods not started) here, or None."""
    if os.geteuid() != 0:
        return "needs root (mount namespaces, chroot, building the image base)"
    # mmdebstrap and umoci are installed by the image build itself when missing (apt-get, as root)
    for tool in ("unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install util-linux coreutils)"
    return None


def _source_hash() -> str:
    """Hash of everything that goes into the images: the lock, the installed packages' sources (not their
    tests) and the builder itself."""
    digest = hashlib.sha256()
    files = [REPO / "uv.lock", REPO / "pyproject.toml", REPO / "libs/servers/src/strongroom_servers/images.py"]
    installed = [REPO / "libs" / name for name in ("platform", "proto", "telemetry")]
    for root in (*installed, REPO / "services", REPO / "agent"):
        files += [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and "tests" not in p.parts]
    for path in sorted(files):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cached_images() -> dict[str, BuiltImage]:
    """The images, from ``<cache>/images/built-<hash>`` or built there now; pytest.skip when they cannot be."""
    reason = missing_prerequisite()
    if reason:
        pytest.skip(f"deploy images: {reason}")
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    out = cache_root() / "images" / f"built-{_source_hash()}"
    started = time.monotonic()
    if (out / ".complete").is_file():
        print(f"images: cached in {out}", file=sys.stderr)
        return {spec.name: BuiltImage(spec.name, out / spec.name, version, 0, 0.0) for spec in IMAGES}
    for stale in (cache_root() / "images").glob("built-*"):
        shutil.rmtree(stale, ignore_errors=True)
    bootstrapped = REPO / ".bootstrap" / "bin" / "uv"
    if not os.environ.get("UV") and shutil.which("uv") is None and bootstrapped.is_file():
        os.environ["UV"] = str(bootstrapped)  # `uv run` sets UV; a bare pytest finds make sync's uv
    try:
        built = {image.name: image for image in build_images(REPO, out, version, log=False)}
    except PrerequisiteMissing as exc:
        pytest.skip(f"deploy images: {exc}")
    (out / ".complete").write_text(version)
    for image in built.values():
        print(f"image {image.name}: {image.compressed_bytes / 1e6:.1f} MB compressed", file=sys.stderr)
    print(f"images built in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return built
