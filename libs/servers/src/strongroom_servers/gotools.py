"""Go command-line tools built once from the Go module proxy into the shared cache.

``ensure_go_binary`` runs ``go install <module>@<version>`` into ``<cache>/<name>-<version>/bin``
(a ``.complete`` marker is written last), with ``CGO_ENABLED=0`` and ``GOTOOLCHAIN=local`` so the
build never fetches another toolchain. The proxy comes from the Go environment (``GOPROXY``).
Used for versitygw and the deploy checks' kustomize and kube-score.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from strongroom_servers._process import (
    PrerequisiteMissing,
    ServerStartError,
    cache_root,
    file_lock,
    run_checked,
    which_or_raise,
)

__all__ = ["KUBE_SCORE", "KUSTOMIZE", "GoTool", "ensure_go_binary"]


@dataclass(frozen=True)
class GoTool:
    """One ``go install``-able command: ``name`` is the binary, ``env_override`` names a prebuilt one."""

    name: str
    module: str
    version: str
    env_override: str
    ldflags: str = ""


# v5.8.1: the newest kustomize that builds with Go 1.26 (v5.8.3 needs Go 1.27).
KUSTOMIZE = GoTool("kustomize", "sigs.k8s.io/kustomize/kustomize/v5", "v5.8.1", "STRONGROOM_KUSTOMIZE_BIN")
KUBE_SCORE = GoTool(
    "kube-score",
    "github.com/zegl/kube-score/cmd/kube-score",
    "v1.20.0",
    "STRONGROOM_KUBE_SCORE_BIN",
    ldflags="-X main.version=v1.20.0",
)


def _binary_ok(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def ensure_go_binary(tool: GoTool) -> Path:
    """Path of ``tool``'s binary, building it with ``go install`` on first use (cached).

    ``$<tool.env_override>`` names a prebuilt binary and skips the build. Raises
    PrerequisiteMissing when ``go`` is needed but absent, ServerStartError when the build fails.
    """
    override = os.environ.get(tool.env_override)
    if override:
        if not _binary_ok(Path(override)):
            raise PrerequisiteMissing(f"{tool.env_override}={override} is not an executable file")
        return Path(override)
    base = cache_root() / f"{tool.name}-{tool.version}"
    binary, marker = base / "bin" / tool.name, base / ".complete"
    if marker.is_file() and _binary_ok(binary):
        return binary
    go = which_or_raise("go", f"the Go toolchain builds {tool.name} once")
    with file_lock(base.parent / f"{tool.name}-{tool.version}.lock"):
        if marker.is_file() and _binary_ok(binary):
            return binary
        base.mkdir(parents=True, exist_ok=True)
        binary.unlink(missing_ok=True)
        env = dict(os.environ)
        env.update(
            CGO_ENABLED="0",  # these commands need no cgo; a static binary has no libc coupling
            GOTOOLCHAIN="local",  # never fetch another toolchain
            GOBIN=str(base / "bin"),
            GOFLAGS=" ".join(filter(None, [env.get("GOFLAGS", ""), "-trimpath"])),
        )
        argv = [go, "install"]
        if tool.ldflags:
            argv.append(f"-ldflags={tool.ldflags}")
        run_checked(
            [*argv, f"{tool.module}@{tool.version}"],
            what=f"go install {tool.name} {tool.version}",
            log_path=base / "build.log",
            env=env,
            cwd=base,
        )
        if not _binary_ok(binary):
            raise ServerStartError(f"go install finished but {binary} is missing")
        marker.write_text(f"{tool.module}@{tool.version}\n")
        return binary
