"""OCI images of Strongroom without a registry or a container daemon (ADR 0044).

Two images, each an OCI layout under the build directory:

- ``services``: every service's entry point (``strongroom-scheduler``, ``-catalog``, ``-billing``,
  ``-gateway``, ``-restore``) and ``strongroom-admin``; runs as uid 10001 with a read-only root.
- ``agent``: ``strongroom-agent``; runs as root with a named capability set (the manifests say which).

Both have two layers: a Debian root filesystem made by ``mmdebstrap`` (Python 3.11 and CA
certificates from Debian packages; cached as a tar under ``<cache>/images/``), then a relocatable
virtual environment at ``/opt/strongroom`` filled by ``uv pip install`` from ``uv export --frozen``
of the workspace lock. ``umoci`` writes the layers and the image configuration. The venv is built
on the host against ``/usr/bin/python3.11``, which must be the same Debian release's interpreter as
the image's (3.11), so compiled extension modules and bytecode match.

Building needs root (the base tar holds root-owned files and device nodes), ``mmdebstrap``,
``umoci`` and ``uv``. Nothing here runs at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strongroom_servers._process import (
    PrerequisiteMissing,
    ServerStartError,
    cache_root,
    debian_tool,
    file_lock,
    which_or_raise,
)

__all__ = [
    "AGENT",
    "IMAGES",
    "SERVICES",
    "BuiltImage",
    "ImageSpec",
    "build_images",
    "ensure_debian_base",
    "image_config",
    "unpack_image",
]

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "ca-certificates", "tzdata")
PYTHON = "/usr/bin/python3.11"
VENV = "/opt/strongroom"
SERVICE_UID = 10001
DATA_DIR = "/var/lib/strongroom"
PATH_ENV = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Trimmed from the base: documentation, manual pages and translations nobody reads in a container,
# and apt's downloaded package lists (the image never runs apt).
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
_CUSTOMIZE = (
    'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log',
    # The services' user; its home is the data volume's mount point (Faust and temp files go there).
    f'chroot "$1" useradd --system --uid {SERVICE_UID} --user-group --home-dir {DATA_DIR} '
    "--no-create-home --shell /usr/sbin/nologin strongroom",
    f'mkdir -p "$1"{DATA_DIR} && chown {SERVICE_UID}:{SERVICE_UID} "$1"{DATA_DIR} && chmod 0750 "$1"{DATA_DIR}',
)


@dataclass(frozen=True)
class ImageSpec:
    """What goes into one image: workspace packages (their locked dependencies come along) and its config."""

    name: str
    packages: tuple[str, ...]
    user: str
    cmd: tuple[str, ...]


SERVICES = ImageSpec(
    name="services",
    packages=(
        "strongroom-scheduler",
        "strongroom-catalog",
        "strongroom-billing",
        "strongroom-gateway",
        "strongroom-restore",
        "strongroom-api",  # the REST edge (ADR 0052): entry point strongroom-api
    ),
    user=f"{SERVICE_UID}:{SERVICE_UID}",
    cmd=("strongroom-admin", "--help"),
)
AGENT = ImageSpec(name="agent", packages=("strongroom-agent",), user="0:0", cmd=("strongroom-agent",))
IMAGES = (SERVICES, AGENT)


@dataclass(frozen=True)
class BuiltImage:
    """One built image: its OCI layout directory and tag, compressed size (layers + config) and build time."""

    name: str
    layout: Path
    tag: str
    compressed_bytes: int
    seconds: float

    @property
    def ref(self) -> str:
        """``<layout>:<tag>``, as umoci and skopeo name an image in an OCI layout."""
        return f"{self.layout}:{self.tag}"


def _run(argv: Sequence[str], *, what: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(
        list(argv), cwd=cwd, env=dict(env) if env is not None else None, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise ServerStartError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


def _debian_mirror_args() -> list[str]:
    """Where mmdebstrap gets packages: ``$STRONGROOM_DEBIAN_MIRROR``, else this Debian host's own apt sources."""
    explicit = os.environ.get("STRONGROOM_DEBIAN_MIRROR")
    if explicit:
        return [explicit]
    host_sources = Path("/etc/apt/sources.list.d/debian.sources")
    if host_sources.is_file():
        return [str(host_sources)]
    return []  # mmdebstrap's default mirror


def ensure_debian_base() -> Path:
    """The Debian root filesystem tar shared by both images, built once with mmdebstrap (cached).

    The cache key covers suite, packages, trims and the mirror setting, so changing any of them
    builds a new tar. Raises PrerequisiteMissing without mmdebstrap or root, ServerStartError when
    mmdebstrap fails.
    """
    mirror = _debian_mirror_args()
    recipe = json.dumps([DEBIAN_SUITE, DEBIAN_PACKAGES, _DPKG_EXCLUDES, _CUSTOMIZE, mirror])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    directory = cache_root() / "images"
    tar = directory / f"debian-{DEBIAN_SUITE}-{key}.tar"
    if tar.is_file():
        return tar
    if os.geteuid() != 0:
        raise PrerequisiteMissing("building the image base needs root (mmdebstrap writes root-owned files)")
    mmdebstrap = debian_tool("mmdebstrap", "mmdebstrap")
    with file_lock(directory / "debian.lock"):
        if tar.is_file():
            return tar
        partial = tar.with_suffix(".partial.tar")
        argv = [mmdebstrap, "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", "--format=tar"]
        argv += [f"--dpkgopt={option}" for option in _DPKG_EXCLUDES]
        argv += [f"--customize-hook={hook}" for hook in _CUSTOMIZE]
        _run([*argv, DEBIAN_SUITE, str(partial), *mirror], what="mmdebstrap")
        partial.rename(tar)
    return tar


def _check_host_python(root: Path) -> None:
    """The venv is built by the host's interpreter: it must be CPython 3.11 like the image's.

    Within 3.11 the bytecode magic and the extension ABI are fixed, so a different Debian patch
    release on the host (a security update) still builds a matching environment.
    """
    if not Path(PYTHON).is_file():
        raise PrerequisiteMissing(f"building the images needs {PYTHON} on the host (apt-get install python3.11)")
    if not (root / PYTHON.lstrip("/")).is_file():
        raise ServerStartError(f"the image base has no {PYTHON}")


def _extract(tar: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(tar) as archive:
        archive.extractall(dest, filter="fully_trusted")  # our own mmdebstrap output: devices, owners kept


def _build_venv(spec: ImageSpec, repo: Path, venv: Path, uv: str) -> None:
    """A relocatable venv at ``venv`` (later inserted at /opt/strongroom) with the locked dependencies."""
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "UV_LINK_MODE": "copy", "UV_PYTHON_DOWNLOADS": "never"}
    packages = [arg for package in spec.packages for arg in ("--package", package)]
    requirements = _run(
        [uv, "export", "--frozen", "--no-dev", "--no-editable", "--no-hashes", "--no-header", *packages],
        what=f"uv export ({spec.name})",
        cwd=repo,
        env=env,
    )
    req_file = venv.parent / f"{spec.name}-requirements.txt"
    req_file.write_text(requirements)
    _run([uv, "venv", "--relocatable", "--python", PYTHON, str(venv)], what="uv venv", cwd=repo, env=env)
    _run(
        [
            uv,
            "pip",
            "install",
            "--no-sources",
            "--python",
            str(venv / "bin" / "python"),
            "--compile-bytecode",
            "-r",
            str(req_file),
        ],
        what=f"uv pip install ({spec.name})",
        cwd=repo,
        env=env,
    )
    editable = sorted(p.name for p in (venv / "lib").glob("python3*/site-packages/*.pth") if "editable" in p.name)
    if editable:
        raise ServerStartError(f"the image's environment has editable installs (pointing at this checkout): {editable}")
    # The interpreter link must name the image's path, which is the host's one too (checked above).
    for link in ("python", "python3", "python3.11"):
        path = venv / "bin" / link
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(PYTHON)


def image_config(layout: Path, tag: str) -> dict[str, object]:
    """The OCI image configuration (``config`` section: User, Env, Cmd, WorkingDir, ...) of ``layout:tag``."""
    manifest = _manifest(layout, tag)
    config_digest = str(manifest["config"]["digest"])
    blob = json.loads(_blob(layout, config_digest).read_text())
    config: dict[str, object] = blob.get("config", {})
    return config


def _blob(layout: Path, digest: str) -> Path:
    algorithm, value = digest.split(":", 1)
    return layout / "blobs" / algorithm / value


def _manifest(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            manifest: dict[str, Any] = json.loads(_blob(layout, entry["digest"]).read_text())
            return manifest
    raise ServerStartError(f"no image tagged {tag!r} in {layout}")


def _compressed_size(layout: Path, tag: str) -> int:
    manifest = _manifest(layout, tag)
    return int(manifest["config"]["size"]) + sum(int(layer["size"]) for layer in manifest["layers"])


def _assemble(spec: ImageSpec, root: Path, venv: Path, layout: Path, tag: str, umoci: str, version: str) -> None:
    shutil.rmtree(layout, ignore_errors=True)
    image = f"{layout}:{tag}"
    _run([umoci, "init", "--layout", str(layout)], what="umoci init")
    _run([umoci, "new", "--image", image], what="umoci new")
    _run([umoci, "insert", "--image", image, str(root), "/"], what="umoci insert (debian base)")
    _run([umoci, "insert", "--image", image, str(venv), VENV], what="umoci insert (python environment)")
    config = [
        umoci,
        "config",
        "--image",
        image,
        "--os",
        "linux",
        "--architecture",
        "amd64",
        f"--config.user={spec.user}",
        f"--config.workingdir={DATA_DIR if spec is SERVICES else '/'}",
        f"--config.env=PATH={PATH_ENV}",
        "--config.env=PYTHONDONTWRITEBYTECODE=1",
        "--config.env=PYTHONUNBUFFERED=1",
        f"--config.env=HOME={DATA_DIR if spec is SERVICES else '/root'}",
        "--config.env=TMPDIR=/tmp",
        "--clear=config.cmd",
        f"--config.label=org.opencontainers.image.title=strongroom-{spec.name}",
        f"--config.label=org.opencontainers.image.version={version}",
        "--config.label=org.opencontainers.image.licenses=Apache-2.0",
    ]
    config += [f"--config.cmd={arg}" for arg in spec.cmd]
    if spec is SERVICES:
        config += [f"--config.volume={DATA_DIR}", "--config.volume=/tmp"]
    _run(config, what="umoci config")
    _run([umoci, "gc", "--layout", str(layout)], what="umoci gc")


def build_images(
    repo: Path, build_dir: Path, version: str, specs: Sequence[ImageSpec] = IMAGES, *, log: bool = True
) -> list[BuiltImage]:
    """Build ``specs`` into ``build_dir/<name>`` OCI layouts tagged ``version``; returns what was built.

    The Debian base is cached (:func:`ensure_debian_base`); the Python layer is rebuilt each time
    from ``uv.lock`` (uv's own cache makes that quick). Raises PrerequisiteMissing when a tool is
    missing, ServerStartError when a step fails (with the tool's output).
    """
    umoci = debian_tool("umoci", "umoci")
    uv = os.environ.get("UV") or which_or_raise("uv", "make sync bootstraps it")
    base = ensure_debian_base()
    built = []
    for spec in specs:
        started = time.monotonic()
        work = build_dir / "work" / spec.name
        root, venv = work / "rootfs", work / "venv" / "strongroom"
        _extract(base, root)
        _check_host_python(root)
        _build_venv(spec, repo, venv, uv)
        layout = build_dir / spec.name
        _assemble(spec, root, venv, layout, version, umoci, version)
        shutil.rmtree(work, ignore_errors=True)
        image = BuiltImage(spec.name, layout, version, _compressed_size(layout, version), time.monotonic() - started)
        if log:
            mb = image.compressed_bytes / 1e6
            print(f"image strongroom/{spec.name}:{version}: {mb:.1f} MB compressed, {image.seconds:.1f}s ({layout})")
        built.append(image)
    return built


def unpack_image(image: BuiltImage, dest: Path) -> Path:
    """Unpack ``image`` with ``umoci unpack`` into the runtime bundle ``dest``; returns its root filesystem."""
    umoci = debian_tool("umoci", "umoci")
    shutil.rmtree(dest, ignore_errors=True)
    _run([umoci, "unpack", "--image", image.ref, str(dest)], what=f"umoci unpack {image.name}")
    return dest / "rootfs"
