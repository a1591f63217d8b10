"""How the command-line entry points report bad input: one line, nonzero exit, no traceback.

Code raises `UserError` (or a subclass) for anything the user can fix: a bad config, a missing
file, a mesh that does not fit. `cli_main` turns it into `error: <message>` on stderr and exit
status 2; genuine bugs still raise with their traceback.
"""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """An error in what the user asked for; its message is the whole story, in one line."""


def cli_main(main):
    """Wraps an absl `main(argv)` so that a `UserError` becomes one line on stderr and exit 2."""

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapped
