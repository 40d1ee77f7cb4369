"""How sizes and times of day read to an operator, the same in the CLI and the web console.

Here (standard library only) because both the operator CLI, which installs without the services,
and the REST edge's console depend on this package and on nothing else in common.
"""

from __future__ import annotations

__all__ = ["minute_of_day", "size"]


def size(n: int) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``100.0 GiB``; exact below 1 KiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def minute_of_day(minute: int) -> str:
    """Minutes after midnight as ``HH:MM``."""
    return f"{minute // 60:02d}:{minute % 60:02d}"
