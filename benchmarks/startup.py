"""What a muse_jax process pays before it does anything: import time of its libraries and CLIs,
in fresh interpreters, for one or more Python environments side by side.

    .venv/bin/python benchmarks/startup.py
    .venv/bin/python benchmarks/startup.py --pythons=.venv/bin/python,/tmp/other/bin/python

Every command line starts a new interpreter; the test suite starts about a hundred (its CLI
tests), and every `train`, `sample` or `evaluate` a user runs pays it once. Each import is
timed --rounds times in its own child process, rounds alternating between the environments;
medians are printed (CPU seconds of the child, user + system), then each environment's ratio
to the first. The environments' ml_dtypes versions are printed beside them: 0.7.0 spends
~0.7 s registering its numpy loops (setup.py pins 0.6.0 for that reason).
"""
from __future__ import annotations

import os
import statistics
import subprocess

from absl import app, flags

_PYTHONS = flags.DEFINE_list("pythons", [".venv/bin/python"], "Interpreters to compare.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Child processes per import and interpreter.")
IMPORTS = ("ml_dtypes", "jax", "flax.linen", "orbax.checkpoint", "transformers",
           "muse_jax.train", "muse_jax.sample", "muse_jax.evaluate")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The child imports the module, then reports its own CPU seconds since it started: what the
# import cost on top of a bare interpreter (measured separately as "python").
_CHILD = """
import resource, sys
if sys.argv[1] != "python":
    import importlib; importlib.import_module(sys.argv[1])
r = resource.getrusage(resource.RUSAGE_SELF)
print(r.ru_utime + r.ru_stime)
"""


def cpu_seconds(python: str, module: str) -> float:
    out = subprocess.run([python, "-c", _CHILD, module], cwd=REPO, check=True, text=True,
                         capture_output=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return float(out.stdout.split()[-1])


def version(python: str) -> str:
    out = subprocess.run([python, "-c", "import ml_dtypes; print(ml_dtypes.__version__)"],
                         text=True, capture_output=True)
    return out.stdout.strip() or "?"


def main(argv) -> None:
    del argv
    pythons = _PYTHONS.value
    times = {(p, m): [] for p in pythons for m in ("python", *IMPORTS)}
    for _ in range(_ROUNDS.value):
        for module in ("python", *IMPORTS):
            for python in pythons:
                times[python, module].append(cpu_seconds(python, module))
    print("CPU seconds to import, median of", _ROUNDS.value, "fresh interpreters")
    for i, python in enumerate(pythons):
        print(f"  [{i}] {python} (ml_dtypes {version(python)})")
    header = "".join(f"{f'[{i}]':>9}" for i in range(len(pythons)))
    ratios = "".join(f"{f'[{i}]/[0]':>9}" for i in range(1, len(pythons)))
    print(f"{'import':<20}{header}{ratios}")
    for module in ("python", *IMPORTS):
        medians = [statistics.median(times[p, module]) for p in pythons]
        cells = "".join(f"{m:9.2f}" for m in medians)
        cells += "".join(f"{m / medians[0]:9.2f}" for m in medians[1:])
        print(f"{module:<20}{cells}")


if __name__ == "__main__":
    app.run(main)
