"""Compile, CPU and wall seconds of a short training run under sets of XLA:CPU settings, each
set in fresh processes: the measurement behind tests/conftest.py's FAST_COMPILE and
muse_jax/cpu_devices.py's one device a core.

    .venv/bin/python benchmarks/xla_flags.py                      # the tests' tiny runs
    .venv/bin/python benchmarks/xla_flags.py --workload=demo_base --steps=20,220 --rounds=2 \
        --sets=default,elemental                                  # after `make demo`
    .venv/bin/python benchmarks/xla_flags.py --workload=demo_tokenizer --steps=20,220 \
        --sets=default,per_core

Workloads:
  tiny       conftest's tokenizer_dir and tiny_base work: configs/vqgan_shapes.py:tiny, then
             configs/base_shapes.py:tiny on it, --steps steps each (the tests' typical run:
             compiling is most of it).
  demo_base  configs/base_shapes.py:demo on the inputs `make demo` precomputed under
             --demo_workdir, no evaluation or checkpoints (the step rate of a long CPU run).
  demo_tokenizer  configs/vqgan_shapes.py:demo, no evaluation or checkpoints.

Flag sets (--sets, any of). On one CPU device:
  default    XLA's defaults
  fast       optimisation level 0, no expensive LLVM passes
  fast_elemental  fast, and the elemental IR emitter instead of the MLIR fusion emitters
             (conftest.FAST_COMPILE since 2026-12-06)
  elemental  the elemental emitter alone
On one device a core (`cpu_devices.count`), as the CLIs run:
  per_core   XLA's defaults
  ynn_conv   convolutions by YNNPACK too (XLA gives it only single dots by default)
  ynn_fusions  YNNPACK fusions of dots, elementwise ops and reductions as well
  eigen_dot  dots by Eigen, not YNNPACK
  onednn     oneDNN for what it supports
  xnn_graph  XNNPACK subgraphs, greedily extracted
  fast_math  LLVM fast math (approximate exp, tanh, division)

Every child runs without a persistent compilation cache and logs each XLA compilation; it
reports the seconds compiling (JAX's log), the CPU seconds of the process (user + system) and
the wall seconds of the run. Rounds alternate between the sets; medians are printed, then each
set's ratio to the first. With two --steps values the seconds a step are printed too, from the
difference of the two runs' wall times.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

_FAST = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
_ELEMENTAL = "--xla_cpu_use_fusion_emitters=false"
_YNN = "--xla_cpu_experimental_ynn_fusion_type="  # XLA's default list: individual_dot
# Each set: (XLA_FLAGS, one CPU device or one a core).
SETS = {
    "default": ("", "one"),
    "fast": (_FAST, "one"),
    "elemental": (_ELEMENTAL, "one"),
    "fast_elemental": (f"{_FAST} {_ELEMENTAL}", "one"),
    "per_core": ("", "per_core"),
    "ynn_conv": (_YNN + "+individual_convolution", "per_core"),
    "ynn_fusions": (_YNN + "+dot,+eltwise,+reduce", "per_core"),
    "eigen_dot": (_YNN + "-individual_dot", "per_core"),
    "onednn": ("--xla_cpu_use_onednn=true", "per_core"),
    "xnn_graph": ("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
                  "per_core"),
    "fast_math": ("--xla_cpu_enable_fast_math=true", "per_core"),
}
_SETS = flags.DEFINE_list("sets", ["fast", "fast_elemental"], f"Flag sets: {', '.join(SETS)}.")
_WORKLOAD = flags.DEFINE_enum("workload", "tiny", ["tiny", "demo_base", "demo_tokenizer"],
                              "What each child trains.")
_STEPS = flags.DEFINE_list("steps", ["2"], "Training steps of a run; two values also give the "
                           "seconds a step.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Child processes per flag set and step count.")
_DEMO_WORKDIR = flags.DEFINE_string("demo_workdir", "workdirs/demo",
                                    "Where `make demo` left its precomputed inputs.")
_CHILD = flags.DEFINE_bool("child", False, "Internal: run one measurement and print JSON.")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(steps: int, root: str) -> str:
    """Trains the workload for `steps` steps under `root`; returns the last run's workdir."""
    from muse_jax import config as config_lib
    from muse_jax import demo, training

    if _WORKLOAD.value == "demo_tokenizer":
        vq = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "demo")
        vq.train.eval_every = vq.train.checkpoint_every = 10 ** 9
        vq.train.progress_every_secs = 5.0
        vq.train.num_steps = steps
        workdir = os.path.join(root, "tokenizer")
        training.train_and_evaluate(vq, workdir)
        return workdir
    if _WORKLOAD.value == "demo_base":
        _, base = demo.configs(_DEMO_WORKDIR.value)
        base.train.eval_every = base.train.checkpoint_every = 10 ** 9
        base.eval.num_samples = 0
        base.train.progress_every_secs = 5.0
    else:
        vq = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
        vq.train.num_steps = steps
        training.train_and_evaluate(vq, os.path.join(root, "tokenizer"))
        base = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "tiny")
        base.tokenizer.workdir = os.path.join(root, "tokenizer")
    base.train.num_steps = steps
    workdir = os.path.join(root, "base")
    training.train_and_evaluate(base, workdir)
    return workdir


def _child(steps: int) -> dict:
    import io
    import logging
    import re
    import resource
    import tempfile
    import time

    import jax

    from muse_jax import host_memory

    host_memory.keep_freed_memory()
    jax.config.update("jax_log_compiles", True)
    log = io.StringIO()
    logging.getLogger("jax").addHandler(logging.StreamHandler(log))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        workdir = _train(steps, root)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rates = [r["steps_per_sec"] for r in map(json.loads, f) if "steps_per_sec" in r]
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    compiling = sum(map(float, re.findall(r"Finished XLA compilation of .* in ([\d.e-]+) sec",
                                          log.getvalue())))
    # The train loop's own steps/s reports (every train.progress_every_secs, after the first
    # step): the step time with compiling left out, read within one process.
    step = 1 / statistics.median(rates) if rates else float("nan")
    return {"compile": compiling, "cpu": usage.ru_utime + usage.ru_stime, "wall": wall,
            "step": step}


def measure(name: str, steps: int) -> dict:
    from muse_jax import cpu_devices

    xla_flags, split = SETS[name]
    devices = cpu_devices.count(cpu_devices.usable_cores()) if split == "per_core" else 1
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags,
           "JAX_NUM_CPU_DEVICES": str(devices), "JAX_ENABLE_COMPILATION_CACHE": "false"}
    out = subprocess.run([sys.executable, __file__, "--child", f"--steps={steps}",
                          f"--workload={_WORKLOAD.value}", f"--demo_workdir={_DEMO_WORKDIR.value}"],
                         cwd=REPO, env=env, text=True, capture_output=True)
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv) -> None:
    del argv
    steps = [int(s) for s in _STEPS.value]
    if _CHILD.value:
        print(json.dumps(_child(steps[0])))
        return
    unknown = set(_SETS.value) - set(SETS)
    if unknown:
        raise SystemExit(f"unknown flag sets {sorted(unknown)} (known: {', '.join(SETS)})")
    runs = {(s, n): [] for s in _SETS.value for n in steps}
    for _ in range(_ROUNDS.value):
        for n in steps:
            for name in _SETS.value:
                runs[name, n].append(measure(name, n))
                print(f"  {name:15s} {n:5d} steps: {json.dumps(runs[name, n][-1])}", flush=True)
    print(f"{_WORKLOAD.value}, medians of {_ROUNDS.value} fresh processes, no compilation cache")
    median = {k: {m: statistics.median(r[m] for r in v)
                  for m in ("compile", "cpu", "wall", "step")} for k, v in runs.items()}
    first = _SETS.value[0]
    for n in steps:
        for name in _SETS.value:
            m, ref = median[name, n], median[first, n]
            print(f"  {name:15s} {n:5d} steps: compile {m['compile']:6.1f} s  cpu {m['cpu']:6.1f} s"
                  f"  wall {m['wall']:6.1f} s  cpu / {first}'s {m['cpu'] / ref['cpu']:.2f}  "
                  f"step (train loop's rate) {m['step']:.3f} s, / {first}'s "
                  f"{m['step'] / ref['step']:.2f}")
    if len(steps) == 2:
        for name in _SETS.value:
            per_step = (median[name, steps[1]]["wall"] - median[name, steps[0]]["wall"]) / (
                steps[1] - steps[0])
            print(f"  {name:15s} seconds a step: {per_step:.3f}")


if __name__ == "__main__":
    app.run(main)
