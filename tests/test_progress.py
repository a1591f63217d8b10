"""Progress bars: a line at a time in a log file, tqdm's redraws on a terminal."""
import io

from muse_jax import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_whole_lines_not_carriage_returns():
    log = io.StringIO()
    with progress.bar(total=1000, desc="encoding", unit="caption", file=log) as counter:
        for _ in range(1000):
            counter.update(1)
    lines = log.getvalue().split("\n")
    assert "\r" not in log.getvalue()
    # The first draw and the last: 1000 updates inside LOG_INTERVAL_SECS draw nothing between.
    assert len(lines) == 3 and lines[-1] == "", lines
    assert lines[0].startswith("encoding:   0%") and "0/1000" in lines[0]
    assert lines[1].startswith("encoding: 100%") and "1000/1000" in lines[1]


def test_a_terminal_gets_tqdms_redraws():
    terminal = Terminal()
    for _ in progress.bar(range(50), desc="steps", file=terminal, mininterval=0, miniters=1):
        pass
    assert terminal.getvalue().count("\r") >= 50
