"""The A/B scripts' ``--variant NAME:KEY=VALUE`` options (``ab.py``, ``restore_ab.py``): sides of this checkout."""

from __future__ import annotations


def parse_variants(specs: list[str]) -> dict[str, dict[str, str]]:
    """Each variant's environment, in the order first named (a NAME given again adds to its environment).

    ValueError names the first spec that is not ``NAME:KEY=VALUE``.
    """
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        name, sep, assignment = spec.partition(":")
        key, eq, value = assignment.partition("=")
        if not (name and sep and key and eq):
            raise ValueError(f"--variant {spec!r}: expected NAME:KEY=VALUE")
        out.setdefault(name, {})[key] = value
    return out
