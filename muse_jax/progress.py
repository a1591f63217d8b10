"""Progress bars that read well both in a terminal and in a log file.

tqdm redraws its line up to ten times a second, each redraw starting with a carriage return; sent
to a file (`make demo > demo.log`, a job scheduler's log) that is thousands of redraws run
together on one line. Off a terminal the bars here redraw every `LOG_INTERVAL_SECS`, each
redraw on a line of its own.
"""
from __future__ import annotations

import sys

LOG_INTERVAL_SECS = 20.0  # between two lines of a bar written to a file


class _Lines:
    """A text file for tqdm that writes each redraw as one line (no carriage returns)."""

    def __init__(self, file):
        self._file = file

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self._file.write(text + "\n")

    def flush(self) -> None:
        self._file.flush()


def bar(iterable=None, *, file=None, **kwargs):
    """`tqdm(iterable, **kwargs)` on `file` (stderr by default), a line every
    `LOG_INTERVAL_SECS` when `file` is not a terminal."""
    from tqdm import tqdm

    file = file or sys.stderr
    if not (hasattr(file, "isatty") and file.isatty()):
        kwargs.pop("dynamic_ncols", None)
        kwargs.update(mininterval=LOG_INTERVAL_SECS, maxinterval=LOG_INTERVAL_SECS, ncols=100)
        file = _Lines(file)
    return tqdm(iterable, file=file, **kwargs)
