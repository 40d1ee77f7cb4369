"""``strongroom``: the operator CLI (``strongroom --help``)."""

from __future__ import annotations

import sys

from strongroom_cli.app import run


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
