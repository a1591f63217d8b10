"""How the command-line entry points report bad input: one line, nonzero exit, no traceback.

Code raises `UserError` (or a subclass) for anything the user can fix: a bad config, a missing
file, a mesh that does not fit. `run(main)` (use it instead of `absl.app.run`) turns it into
`error: <message>` on stderr and exit status 2, and does the same for bad flags, including
`--config` files that do not exist and `--config.x.y=...` overrides of unknown keys or of the
wrong type, which absl would otherwise report with a traceback. Genuine bugs still raise with
their traceback. A training run stopped by SIGTERM (a preemption notice) after saving its
checkpoint raises `Preempted`, which becomes `preempted: <message>` and exit status 143
(128 + SIGTERM, what a shell reports for a process that SIGTERM ended): not done, rerun it;
stopped by Ctrl-C the same way, `interrupted: <message>` and 130 (128 + SIGINT). A Ctrl-C
anywhere else (a KeyboardInterrupt) is `interrupted` in one line and 130 too. A full disk
(or quota, file-size limit, read-only file system) met outside the checkpoint code is one
`error:` line and exit 2 too.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import sys

from absl import app, flags

from muse_jax import cpu_devices, host_memory

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 143
EXIT_INTERRUPTED = 130
# OS errors that are the machine's state, not a bug: a full disk or quota, a file-size
# limit, a read-only file system. They end any command with one line.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class UserError(Exception):
    """An error in what the user asked for; its message is the whole story, in one line."""


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete or unreadable, or cannot be written: a run's
    own (Orbax) or an imported one (Hugging Face). The message names the files and the cause."""


class Preempted(Exception):
    """Stopped on a preemption notice (or Ctrl-C) with a checkpoint saved; the same command
    resumes. `status`: the exit status, 128 + the signal."""

    def __init__(self, message: str, status: int = EXIT_PREEMPTED):
        super().__init__(message)
        self.status = status


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def cli_main(main):
    """Wraps an absl `main(argv)` so that a `UserError` becomes one line on stderr and exit 2."""

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except UserError as e:
            _fail(str(e))
        except Preempted as e:
            word = "interrupted" if e.status == EXIT_INTERRUPTED else "preempted"
            print(f"{word}: {e}", file=sys.stderr, flush=True)
            sys.exit(e.status)
        except OSError as e:
            if e.errno not in _DISK_ERRNOS:
                raise
            where = f" writing {e.filename}" if e.filename else ""
            _fail(f"{e.strerror or e}{where} (errno {e.errno}); free space or choose another "
                  f"directory, then run the same command again")
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C)", file=sys.stderr, flush=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapped


def _missing_config_file(argv: list[str]) -> str | None:
    for arg in argv[1:]:
        name, _, value = arg.lstrip("-").partition("=")
        if name == "config" and not os.path.isfile(value.split(":", 1)[0]):
            return f"config file {value.split(':', 1)[0]} not found (--config={value})"
    return None


def flag_error(argv: list[str], error: Exception) -> str:
    """One line for a flag-parsing failure, naming the key or value at fault."""
    overrides = [a.lstrip("-").partition("=")[0] for a in argv[1:]
                 if a.lstrip("-").startswith("config.")]
    if isinstance(error, (AttributeError, KeyError)):
        # ml_collections raises AttributeError(KeyError("'key'\nDid you mean ...?")), which
        # str() shows repr'd: unwrap to the message itself.
        cause = error
        while cause.args and isinstance(cause.args[0], BaseException):
            cause = cause.args[0]
        text = str(cause.args[0]) if cause.args else str(cause)
        key, _, hint = text.strip().partition("\n")
        key = key.strip("'\"")
        for name in overrides:
            if key in name.split("."):
                hint = f"; {hint.strip()}" if hint.strip() else ""
                return f"unknown config key {name} (--{name}){hint}"
    # absl wraps errors from the config file itself; its last line is the cause.
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def parse_flags(argv: list[str]) -> list[str]:
    # config_flags defers a missing file's error to the first access, with a traceback.
    missing = _missing_config_file(argv)
    if missing:
        _fail(missing)
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001  absl and config_flags raise many types here
        _fail(flag_error(argv, e))


class OwnInfoOnly(logging.Filter):
    """Passes warnings and errors from anywhere, INFO and DEBUG from muse_jax's own files only:
    the libraries' INFO lines (Orbax's "Closing _NonBlockingMetadataStore(...)", ...) stay out
    of a user's terminal unless `--verbosity=1` (or more) asks for them."""

    _OWN = os.path.dirname(os.path.abspath(__file__)) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.pathname.startswith(self._OWN)


def _quiet_libraries(main):
    @functools.wraps(main)
    def wrapped(argv):
        if flags.FLAGS["verbosity"].value < 1:
            for handler in logging.getLogger().handlers:  # absl's, which every logger reaches
                handler.addFilter(OwnInfoOnly())
        return main(argv)
    return wrapped


def run(main) -> None:
    """`absl.app.run(main)` with bad flags and `UserError`s reported in one line, exit 2, and
    library INFO logging kept out of the terminal (`OwnInfoOnly`), and, before anything starts
    JAX, glibc set to reuse the memory of XLA's per-step buffers (`host_memory`) and a CPU host
    split into one JAX device a core (`cpu_devices`)."""
    host_memory.keep_freed_memory()
    cpu_devices.split_host()
    app.run(_quiet_libraries(cli_main(main)), flags_parser=parse_flags)
