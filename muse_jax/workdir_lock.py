"""One training run per workdir: a lock that a second run is refused by, and a killed run frees.

Two runs on one workdir destroy each other's work: one deletes the other's checkpoint in
progress, or both resume from the same step and write every step twice. The run takes an
exclusive `fcntl.flock` on `<workdir>/run.lock` and holds it until it ends. The kernel drops
such a lock when its process dies however it dies (SIGKILL, OOM killer, a crash), so a
killed run never leaves a stale lock behind: the next run just takes it. The file also says
who holds it (host, pid, start time), for the refusal's message; its content is never trusted
for the decision.

Multi-host runs: process 0 takes the lock for the run as a whole (the workdir is shared; the
other processes follow it). Workdirs on object stores (gs://) have no such lock: they are not
locked, and the log says so.
"""
from __future__ import annotations

import datetime
import json
import os
import socket

from absl import logging

from muse_jax.errors import UserError

LOCK_FILE = "run.lock"


class WorkdirLock:
    """Held from `acquire` until `release` (or the process's end)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        import fcntl

        if "://" in self.workdir:
            logging.warning("%s is not local: it cannot be locked against a second run on it",
                            self.workdir)
            return self
        path = os.path.join(self.workdir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise UserError(f"workdir {self.workdir} is in use by another training run "
                            f"({holder}); wait for it to finish or stop it, or choose another "
                            f"--workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "started": datetime.datetime.now().isoformat(
                                     timespec="seconds")}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (harmless)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (f"pid {holder['pid']} on {holder['host']}, started {holder['started']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "its details are not written yet"
