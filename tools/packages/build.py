"""Build the strongroom-agent .deb and .rpm and the apt and yum repository layouts (ADR 0045).

    uv run python tools/packages/build.py [--out dist]      # or: make packages

Steps:
1. stage /opt/strongroom/agent: the agent and the workspace packages it imports as wheels, plus
   its dependencies pinned by uv.lock (hash-checked, manylinux wheels for CPython 3.11), installed
   with ``uv pip install --target`` into ``lib/``, byte-compiled (so nothing is written at run
   time), the launcher ``bin/strongroom-agent`` and the ``PACKAGE`` marker the agent reads to
   uninstall itself through the package manager;
2. render the .deb and the .rpm from the one description ``nfpm.yaml`` with nfpm (built once from
   the Go module proxy with ``go install``, cached under ``~/.cache/strongroom``);
3. lay out an apt repository (``dist/apt``: pool + dists/stable, ``apt-ftparchive``) and a yum
   repository (``dist/yum``: the .rpm + repodata, ``createrepo_c``); missing tools are installed
   with apt-get when running as root;
4. with ``STRONGROOM_PACKAGE_SIGNING_KEY`` (a gpg key id of the caller's keyring, ``GNUPGHOME``
   respected): sign both repositories (``InRelease``/``Release.gpg``, ``repomd.xml.asc``) and
   export the public key as ``dist/strongroom.asc``, the key the install commands fetch. Without
   it the repositories are unsigned (development), and said so.

Prints one line per artifact (path and size) and a last line ``PACKAGES <deb> <rpm>``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from strongroom_servers import cache_root
from strongroom_servers._process import PrerequisiteMissing, debian_tool

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NFPM_MODULE = "github.com/goreleaser/nfpm/v2/cmd/nfpm"
NFPM_VERSION = "v2.48.0"
PACKAGE = "strongroom-agent"
# Workspace members the agent imports; everything else comes from uv.lock as published wheels.
WORKSPACE_PACKAGES = ("strongroom-proto", "strongroom-telemetry", "strongroom-agent")
PYTHON_VERSION = "3.11"
# The wheels' platform: glibc 2.28 covers Debian 10+, Ubuntu 20.04+, RHEL/Rocky 8+ (ADR 0045).
PLATFORMS = {"amd64": ("x86_64-manylinux_2_28", "x86_64"), "arm64": ("aarch64-manylinux_2_28", "aarch64")}
APT_DIST, APT_COMPONENT = "stable", "main"
# Debian packages providing the repository tools.
TOOL_PACKAGES = {"apt-ftparchive": "apt-utils", "createrepo_c": "createrepo-c", "mmdebstrap": "mmdebstrap"}


class BuildError(Exception):
    pass


def run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a build step; on failure raise BuildError with the command's output tail."""
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-25:]
        raise BuildError(f"{' '.join(argv[:3])} ... failed ({done.returncode}):\n" + "\n".join(tail))
    return done.stdout


def uv() -> str:
    for candidate in (os.environ.get("UV"), shutil.which("uv"), str(ROOT / ".bootstrap" / "bin" / "uv")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BuildError("uv not found: run `make sync` first")


def ensure_tool(tool: str) -> str:
    """Path of a Debian-packaged tool, installed with apt-get when missing and running as root."""
    try:
        return debian_tool(tool, TOOL_PACKAGES[tool])
    except PrerequisiteMissing as exc:
        raise BuildError(str(exc)) from None


def ensure_nfpm() -> Path:
    """The nfpm binary, built once with ``go install`` into the shared cache."""
    base = cache_root() / f"nfpm-{NFPM_VERSION}"
    binary, marker = base / "bin" / "nfpm", base / ".complete"
    if marker.is_file() and os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go")
    if go is None:
        raise BuildError("the Go toolchain is needed once to build nfpm (`go` not on PATH)")
    base.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOBIN=str(base / "bin"))
    env["GOFLAGS"] = " ".join(filter(None, [env.get("GOFLAGS", ""), "-trimpath"]))
    run([go, "install", f"{NFPM_MODULE}@{NFPM_VERSION}"], cwd=base, env=env)
    marker.write_text(f"{NFPM_MODULE}@{NFPM_VERSION}\n")
    return binary


def agent_version() -> str:
    """The package version: the agent's ``__version__`` (the gateway's version window is defined on it)."""
    text = (ROOT / "agent" / "src" / "strongroom_agent" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([0-9]+\.[0-9]+\.[0-9]+)"$', text, re.M)
    if not match:
        raise BuildError('agent/src/strongroom_agent/__init__.py has no __version__ = "X.Y.Z"')
    return match.group(1)


def stage(stage_dir: Path, work: Path, arch: str) -> Path:
    """Populate ``stage_dir/opt/strongroom/agent``; return it."""
    tool = uv()
    opt = stage_dir / "opt" / "strongroom" / "agent"
    lib, wheels = opt / "lib", work / "wheels"
    requirements = work / "requirements.txt"
    exported = run(
        [
            tool,
            "export",
            "--frozen",
            "--package",
            PACKAGE,
            "--no-dev",
            "--no-emit-workspace",
            "--format",
            "requirements-txt",
            "--output-file",
            str(requirements),
        ],
        cwd=ROOT,
    )
    del exported
    for name in WORKSPACE_PACKAGES:
        run([tool, "build", "--package", name, "--wheel", "--out-dir", str(wheels)], cwd=ROOT)
    python_platform = PLATFORMS[arch][0]
    common = [
        "--target",
        str(lib),
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        python_platform,
        "--only-binary",
        ":all:",
        "--no-deps",
        "--link-mode",
        "copy",
        "--no-config",
    ]
    run([tool, "pip", "install", *common, "--require-hashes", "-r", str(requirements)], cwd=ROOT)
    run([tool, "pip", "install", *common, *map(str, sorted(wheels.glob("*.whl")))], cwd=ROOT)
    # Console scripts of the dependencies carry the staging path in their #! line; the package has its own.
    shutil.rmtree(lib / "bin", ignore_errors=True)
    # Byte code for the interpreter the package depends on (3.11), valid whatever the files' times.
    run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            "-d",
            "/opt/strongroom/agent/lib",
            str(lib),
        ]
    )
    (opt / "bin").mkdir(parents=True)
    shutil.copy2(HERE / "files" / "strongroom-agent", opt / "bin" / "strongroom-agent")
    os.chmod(opt / "bin" / "strongroom-agent", 0o755)
    # The agent uninstalls itself through the package manager when this file exists (ADR 0045).
    (opt / "PACKAGE").write_text(f"{PACKAGE}\n")
    return opt


def package(nfpm: Path, stage_dir: Path, out: Path, arch: str, version: str) -> tuple[Path, Path]:
    values = {
        "PKG_ARCH": arch,
        "PKG_VERSION": version,
        "PKG_STAGE": str(stage_dir),
        "PKG_FILES": str(HERE / "files"),
        "PKG_SCRIPTS": str(HERE / "scripts"),
    }
    config = stage_dir.parent / "nfpm.yaml"
    config.write_text(string.Template((HERE / "nfpm.yaml").read_text()).substitute(values))
    # Reproducible file times in both packages.
    env = dict(os.environ, SOURCE_DATE_EPOCH=os.environ.get("SOURCE_DATE_EPOCH", "1767225600"))
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"{PACKAGE}_{version}-1_{arch}.deb"
    rpm = out / f"{PACKAGE}-{version}-1.{PLATFORMS[arch][1]}.rpm"
    for packager, target in (("deb", deb), ("rpm", rpm)):
        target.unlink(missing_ok=True)
        run([str(nfpm), "package", "--config", str(config), "--packager", packager, "--target", str(target)], env=env)
    return deb, rpm


def apt_repository(deb: Path, out: Path, arch: str) -> Path:
    """``out/apt``: pool/ + dists/stable/{Release, main/binary-ARCH/Packages{,.gz}} (unsigned; ADR 0045)."""
    ftparchive = ensure_tool("apt-ftparchive")
    repo = out / "apt"
    shutil.rmtree(repo, ignore_errors=True)
    pool = repo / "pool" / APT_COMPONENT / "s" / PACKAGE
    pool.mkdir(parents=True)
    shutil.copy2(deb, pool / deb.name)
    binary = repo / "dists" / APT_DIST / APT_COMPONENT / f"binary-{arch}"
    binary.mkdir(parents=True)
    packages = run([ftparchive, "packages", "pool"], cwd=repo)
    (binary / "Packages").write_text(packages)
    run(["gzip", "-9nk", str(binary / "Packages")])
    release = run(
        [
            ftparchive,
            "-o",
            f"APT::FTPArchive::Release::Suite={APT_DIST}",
            "-o",
            f"APT::FTPArchive::Release::Codename={APT_DIST}",
            "-o",
            "APT::FTPArchive::Release::Origin=Strongroom",
            "-o",
            f"APT::FTPArchive::Release::Components={APT_COMPONENT}",
            "-o",
            f"APT::FTPArchive::Release::Architectures={arch}",
            "release",
            f"dists/{APT_DIST}",
        ],
        cwd=repo,
    )
    (repo / "dists" / APT_DIST / "Release").write_text(release)
    return repo


def yum_repository(rpm: Path, out: Path) -> Path:
    """``out/yum``: the .rpm and repodata/ (createrepo_c; unsigned, ADR 0045)."""
    createrepo = ensure_tool("createrepo_c")
    repo = out / "yum"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    shutil.copy2(rpm, repo / rpm.name)
    run([createrepo, "--quiet", str(repo)])
    return repo


def sign_repositories(out: Path, key: str) -> Path:
    """Clear-sign the apt Release, detach-sign the yum repomd.xml, export the public key."""
    gpg = shutil.which("gpg")
    if gpg is None:
        raise BuildError("STRONGROOM_PACKAGE_SIGNING_KEY is set but gpg is not installed")
    sign = [gpg, "--batch", "--yes", "--local-user", key, "--armor"]
    release = out / "apt" / "dists" / APT_DIST / "Release"
    run([*sign, "--clearsign", "--output", str(release.with_name("InRelease")), str(release)])
    run([*sign, "--detach-sign", "--output", str(release.with_name("Release.gpg")), str(release)])
    repomd = out / "yum" / "repodata" / "repomd.xml"
    run([*sign, "--detach-sign", "--output", f"{repomd}.asc", str(repomd)])
    public = out / "strongroom.asc"
    public.write_text(run([gpg, "--batch", "--armor", "--export", key]))
    if "PUBLIC KEY" not in public.read_text():
        raise BuildError(f"gpg exported no public key for {key!r}")
    return public


def build(out: Path, arch: str) -> tuple[Path, Path]:
    version = agent_version()
    nfpm = ensure_nfpm()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="strongroom-pkg-") as tmp:
        work = Path(tmp)
        stage(work / "stage", work, arch)
        deb, rpm = package(nfpm, work / "stage", out, arch, version)
    apt_repository(deb, out, arch)
    yum_repository(rpm, out)
    key = os.environ.get("STRONGROOM_PACKAGE_SIGNING_KEY", "")
    if key:
        sign_repositories(out, key)
    else:
        (out / "strongroom.asc").unlink(missing_ok=True)
        print("repositories unsigned: set STRONGROOM_PACKAGE_SIGNING_KEY to sign them", file=sys.stderr)
    return deb, rpm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/packages/build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output directory (default: dist/)")
    parser.add_argument("--arch", choices=sorted(PLATFORMS), default="amd64", help="Debian architecture name")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        deb, rpm = build(args.out.resolve(), args.arch)
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    for artifact in (deb, rpm):
        print(f"{artifact}  {artifact.stat().st_size / 1e6:.1f} MB")
    print(f"apt repository: {args.out / 'apt'}; yum repository: {args.out / 'yum'}")
    print(f"built in {time.monotonic() - started:.0f} s")
    print(f"PACKAGES {deb} {rpm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
