"""Page faults and system time of a training step, with glibc's defaults and with
muse_jax.host_memory's settings, in alternating child processes on this machine's CPU.

    .venv/bin/python benchmarks/host_memory.py                 # the demo's base step, 3 rounds
    .venv/bin/python benchmarks/host_memory.py --rounds=2 --measured_steps=10 --width=512 \
        --depth=8 --heads=8 --mlp_dim=2048 --codebook=1024 --text_len=77 --text_dim=768 --batch=8

The step is benchmarks/base_step.py's muse_jax step (AdamW, no EMA, no dropout); the defaults
here are configs/base_shapes.py:demo's sizes (width 128, 4 blocks of 4 heads, MLP 512, 16x16
tokens from 256 codes, 40 MiniLM tokens of width 384, batch 32). Each child compiles the step,
runs --warmup steps, then counts, over --measured_steps steps: minor page faults, system and
user CPU seconds (getrusage) and wall seconds. Rounds alternate the two settings; medians are
printed, then the ratios default / muse_jax.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import base_step  # noqa: E402  (its flags set the step's sizes)

_CHILD = flags.DEFINE_bool("child", False, "Internal: run one measurement and print JSON.")
_MEASURED = flags.DEFINE_integer("measured_steps", 20, "Steps counted in each child.")
DEMO = {"batch": 32, "width": 128, "depth": 4, "heads": 4, "mlp_dim": 512, "grid": 16,
        "codebook": 256, "text_len": 40, "text_dim": 384}
SIZE_FLAGS = tuple(DEMO)


def measure() -> dict:
    import resource

    from muse_jax import host_memory

    applied = host_memory.keep_freed_memory()  # before JAX starts its CPU threads
    run, _, _ = base_step.build_jax(base_step.Dims())
    for _ in range(base_step._WARMUP.value):
        run()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(_MEASURED.value):
        run()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    n = _MEASURED.value
    return {"applied": applied, "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / n,
            "system_s_per_step": (after.ru_stime - before.ru_stime) / n,
            "user_s_per_step": (after.ru_utime - before.ru_utime) / n, "wall_s_per_step": wall / n}


def child(setting: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
           "MUSE_JAX_MALLOC": setting}
    sizes = [f"--{name}={flags.FLAGS[name].value}" for name in SIZE_FLAGS]
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                          f"--measured_steps={_MEASURED.value}",
                          f"--warmup={base_step._WARMUP.value}", *sizes],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv) -> None:
    del argv
    if _CHILD.value:
        print(json.dumps(measure()))
        return
    results: dict[str, list[dict]] = {"default": [], "muse_jax": []}
    for i in range(base_step._ROUNDS.value):
        for setting in (("default", "muse_jax") if i % 2 == 0 else ("muse_jax", "default")):
            results[setting].append(child(setting))
            print(f"round {i + 1} {setting}: {json.dumps(results[setting][-1])}", flush=True)
    keys = ("minor_faults_per_step", "system_s_per_step", "user_s_per_step", "wall_s_per_step")
    medians = {s: {k: statistics.median(r[k] for r in rs) for k in keys}
               for s, rs in results.items()}
    sizes = {name: flags.FLAGS[name].value for name in SIZE_FLAGS}
    print(json.dumps({"sizes": sizes, "medians": medians,
                      "default_over_muse_jax": {k: medians["default"][k] / max(
                          medians["muse_jax"][k], 1e-12) for k in keys}}, indent=1))


if __name__ == "__main__":
    for name, value in DEMO.items():  # the demo's sizes unless a flag says otherwise
        flags.FLAGS.set_default(name, value)
    flags.FLAGS.set_default("rounds", 3)
    flags.FLAGS.set_default("warmup", 2)
    app.run(main)
