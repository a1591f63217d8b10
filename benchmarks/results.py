"""Runs the benchmarks and writes what they print to benchmarks/RESULTS.md: one command.

    .venv/bin/python benchmarks/results.py                   # every benchmark below, in turn
    .venv/bin/python benchmarks/results.py sampler base_step  # rerun these; keep the others

Each benchmark runs alone (they time against peers in the same run, and two at once on a
small machine would distort each other), as a child process with the command shown in its
section; its whole output is kept with the date and the machine, and a failed run is kept
with its exit status, so RESULTS.md never shows a figure without the command behind it.
The peers need the `bench` extra (see setup.py); input_pipeline needs scikit-image.
benchmarks/device_check.sh is not here: it needs a GPU (see its header).
"""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"

# name -> arguments after `python benchmarks/NAME.py`, as the section shows them.
BENCHMARKS = {
    "vqgan_shapes": [],
    "text_encoder_throughput": [],
    "base_step": [],
    "sampler": [],
    "sr_attention": [],
    "input_pipeline": ["--photos=/tmp/muse_jax_photos"],
    "host_memory": [],
    # The real aMUSEd-256 architecture; batch 8 at 12 steps is long on a small CPU.
    "amused_import": ["--batches=1,8", "--steps=12", "--repeats=1"],
    "tokenizer_lpips": ["--steps=150"],
    "step_compile": [],
    # These three reuse the demo's tokenizer and precomputed inputs: run `make demo` first.
    "paper_recipe": [],
    "new_concept": ["--workdir=/tmp/muse_jax_new_concept", "--tokenizer=workdirs/demo/vqgan_shapes_shipped"],
    "demo_recipe": ["--out=/tmp/muse_jax_demo_recipe"],
}
HEADER = """# Benchmark results

Written by `.venv/bin/python benchmarks/results.py` (all) or `... results.py NAME` (one); each
section is the verbatim output of the command it names. Ratios against peers measured in the
same run are the figures to compare across machines; absolute times depend on the machine.
"""


def machine() -> str:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, "
            f"jax {jax.__version__} on {devices}")


def run(name: str, args: list[str]) -> str:
    command = [sys.executable, f"benchmarks/{name}.py", *args]
    shown = " ".join([".venv/bin/python", *command[1:]])
    print(f"running {shown}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    seconds = time.perf_counter() - start
    output = result.stdout.strip()
    if result.returncode != 0:
        output += f"\n\n(exit status {result.returncode}; stderr ends:)\n" + result.stderr[-3000:]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!-- bench:{name} -->\n## {name}\n\n`{shown}`\n\n{date}, {seconds:.0f} s; "
            f"{machine()}\n\n```\n{output}\n```\n<!-- /bench:{name} -->")


def sections(text: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in
            re.finditer(r"<!-- bench:(\w+) -->.*?<!-- /bench:\1 -->", text, re.S)}


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"error: unknown benchmark(s) {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})",
              file=sys.stderr)
        return 2
    kept = sections(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name in names or list(BENCHMARKS):
        kept[name] = run(name, BENCHMARKS[name])
        # Sections it does not run (device_check's, from a lent GPU) stay, after the others.
        ordered = ([kept[n] for n in BENCHMARKS if n in kept]
                   + [text for n, text in kept.items() if n not in BENCHMARKS])
        RESULTS.write_text(HEADER + "\n" + "\n\n".join(ordered) + "\n")  # after each, in case
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
