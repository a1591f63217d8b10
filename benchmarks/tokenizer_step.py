"""The demo tokenizer's train step with muse_jax's GroupNorm and upsampling beside flax's.

    .venv/bin/python benchmarks/tokenizer_step.py               # configs/vqgan_shapes.py:demo
    .venv/bin/python benchmarks/tokenizer_step.py --rounds=5 --steps=10

Arms, each round in a fresh process (one device a core, as the CLIs run), alternated:
  muse_jax  models/norms.GroupNorm and vqgan.upsample_nearest (what the tokenizers use)
  flax      flax's nn.GroupNorm and jax.image.resize(..., "nearest"), what they used before
Each child builds the jitted train step of the config (skip_nonfinite included, as training
jits it) on one batch of its input pipeline, runs a warm-up step, then times --steps steps and
prints seconds a step; the medians over rounds and their ratio are printed last. Both arms
compute the same function (tests/test_vqgan.py pins the norm and the upsampling to flax's).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

_VARIANT = flags.DEFINE_string("variant", "demo", "Variant of configs/vqgan_shapes.py.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Processes an arm.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps a process.")
_ARM = flags.DEFINE_string("arm", None, "Internal: run one arm in this process and print JSON.")
ARMS = ("muse_jax", "flax")


def child(arm: str) -> dict:
    from muse_jax import cpu_devices

    cpu_devices.split_host()
    import flax.linen as nn
    import jax

    from muse_jax import config as config_lib, parallel, tasks, training
    from muse_jax.data import pipeline
    from muse_jax.models import vqgan

    if arm == "flax":
        vqgan.GroupNorm = nn.GroupNorm
        vqgan.upsample_nearest = lambda x: jax.image.resize(
            x, (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3]), "nearest")
    config = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", _VARIANT.value)
    mesh = parallel.create_mesh(config.mesh, None)
    task = tasks.create(config)
    steps = task.load(mesh)
    batch_sharding = parallel.batch_sharding(mesh)
    local = next(pipeline.train_iterator(config, keep_caption=task.uses_captions))
    batch = parallel.global_batch(steps.prepare_batch(local), batch_sharding)
    rng = jax.random.key(0)
    abstract = parallel.abstract_sharded(task.init_state, mesh, rng)
    state = steps.start_state(parallel.create_sharded(task.init_state, mesh, rng)[0])
    frozen = steps.frozen
    step = jax.jit(training.skip_nonfinite(steps.train_step),
                   in_shardings=(jax.tree.map(lambda x: x.sharding, abstract), batch_sharding,
                                 parallel.replicated(mesh),
                                 jax.tree.map(lambda x: x.sharding, frozen)),
                   out_shardings=(jax.tree.map(lambda x: x.sharding, abstract),
                                  parallel.replicated(mesh)), donate_argnums=0)
    state, out = step(state, batch, rng, frozen)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for i in range(_STEPS.value):
        state, out = step(state, batch, jax.random.fold_in(rng, i), frozen)
    jax.block_until_ready(out)
    return {"arm": arm, "s_per_step": (time.perf_counter() - start) / _STEPS.value,
            "loss": float(out["loss"])}


def main(argv) -> None:
    del argv
    if _ARM.value:
        print(json.dumps(child(_ARM.value)), flush=True)
        return
    times = {arm: [] for arm in ARMS}
    for r in range(_ROUNDS.value):
        for arm in ARMS:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), f"--arm={arm}",
                                  f"--variant={_VARIANT.value}", f"--steps={_STEPS.value}"],
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            times[arm].append(result["s_per_step"])
            print(f"round {r + 1}/{_ROUNDS.value} {arm:9s} {result['s_per_step']:.3f} s a step "
                  f"(loss {result['loss']:.4f})", flush=True)
    medians = {arm: statistics.median(t) for arm, t in times.items()}
    print(f"configs/vqgan_shapes.py:{_VARIANT.value} train step, median s a step: "
          + ", ".join(f"{arm} {m:.3f}" for arm, m in medians.items())
          + f"; flax / muse_jax: {medians['flax'] / medians['muse_jax']:.2f}x")
    print(json.dumps({"benchmark": "tokenizer_step", "variant": _VARIANT.value,
                      "median_s_per_step": medians, "samples": times}))


if __name__ == "__main__":
    app.run(main)
