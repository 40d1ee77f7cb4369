"""Which agent versions this gateway serves: N−1 to N (ADR 0045).

N is the release's MAJOR.MINOR, the version of the strongroom-gateway distribution (the agent
package of the same release carries the same version). An agent of the same major and a minor of
N−1 or N is served; an older one is refused at enrollment and when its session opens, with the
commands that upgrade it; a newer one (agents upgraded before the gateway) is refused too, with the
order to upgrade in. Patch releases never change the window.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re

from strongroom_gateway.errors import FailedPrecondition

DISTRIBUTION = "strongroom-gateway"
_VERSION = re.compile(r"^(\d{1,6})\.(\d{1,6})(?:\.\d{1,6})?(?:[-+.~][0-9A-Za-z.+~-]*)?$")
UPGRADE = (
    "upgrade it on the host: apt-get update && apt-get install --only-upgrade strongroom-agent "
    "(RHEL: dnf upgrade strongroom-agent), or a new agent image for the DaemonSet"
)


def release(version: str) -> tuple[int, int] | None:
    """MAJOR.MINOR of a version string (``0.1.0``, ``0.2``, ``1.4.2-1``), or None when it is none."""
    match = _VERSION.match(version)
    return (int(match.group(1)), int(match.group(2))) if match else None


@functools.cache
def gateway_release() -> tuple[int, int]:
    """N: the installed gateway's release (read on first use, never at import)."""
    found = release(importlib.metadata.version(DISTRIBUTION))
    if found is None:
        raise RuntimeError(f"{DISTRIBUTION} has no MAJOR.MINOR version")
    return found


def accepted(n: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The oldest and newest agent releases a gateway of release ``n`` serves."""
    major, minor = n
    return (major, max(0, minor - 1)), n


def check_agent_version(version: str, n: tuple[int, int]) -> None:
    """Refuse (FAILED_PRECONDITION) an agent outside N−1..N, saying what to do."""
    oldest, newest = accepted(n)
    window = f"{oldest[0]}.{oldest[1]} to {newest[0]}.{newest[1]}"
    found = release(version)
    if found is None:
        raise FailedPrecondition(
            f"the agent reports no usable version ({version!r}); this gateway serves agents {window}: {UPGRADE}"
        )
    if found < oldest:
        raise FailedPrecondition(f"agent {version} is too old: this gateway serves agents {window}; {UPGRADE}")
    if found > newest:
        raise FailedPrecondition(
            f"agent {version} is newer than this gateway ({newest[0]}.{newest[1]}): "
            "upgrade the platform before its agents, or install the agent of the platform's release"
        )
