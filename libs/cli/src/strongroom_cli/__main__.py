"""``strongroom``: the operator CLI (``strongroom --help``)."""

from __future__ import annotations

import os
import sys

from strongroom_cli.app import run


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code.

    A reader that stops early (``strongroom ... --json | head``) closes the pipe: that ends the
    output quietly, with exit code 0, instead of a traceback.
    """
    try:
        code = run(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
