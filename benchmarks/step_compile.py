"""XLA compile times of the programs every training run builds, each beside its alternative.

    .venv/bin/python benchmarks/step_compile.py            # the tiny shapes tokenizer (tests)
    .venv/bin/python benchmarks/step_compile.py --variant=demo

On a CPU most of a short run (every test, the demo's first minute) is compiling. Two programs
compiled far slower than their work warranted, and this prints both choices side by side:

  init      the initial train state (`parallel.create_sharded`), at XLA's default backend
            optimisation level and with `compile_options.run_once()` (level 0), which
            `create_sharded` uses: a program that runs once is not worth LLVM's optimiser.
  guard     the train step wrapped in `training.skip_nonfinite`, keeping the old state on a
            bad update by one `lax.cond` (what training uses) or by a `jnp.where` per state
            leaf (what it used before 2026-12-02), and the bare step for scale.
  checksums the checkpoint checksums of the state (`muse_jax.checksums`), as one program over
            all its arrays (before 2026-12-05) and as one program a distinct leaf shape, which
            `checksums.compute` uses (demo base state, first call: 4.9 s against 2.0 s).

Each program is compiled --repeats times from scratch (no persistent cache; the in-memory
cache is cleared), alternating between the choices, and the median is printed. The three step
programs are then run, after a warm-up step, 3 steps a round for --repeats interleaved rounds on random images, and
the median seconds a step printed too: the guard's cond costs no step time that shows (demo
size, 2026-12-02: bare 0.348 s, cond 0.340 s, where 0.329 s, all within the noise).
"""
from __future__ import annotations

import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from muse_jax import checksums, compile_options, config as config_lib, parallel, training
from muse_jax.tasks import vqgan

FLAGS = flags.FLAGS
flags.DEFINE_string("variant", "tiny", "Variant of configs/vqgan_shapes.py to build.")
flags.DEFINE_integer("repeats", 3, "Compilations of each program.")


def where_guard(train_step):
    """`skip_nonfinite` as it was: the same checks, the state kept by a where per leaf."""
    def step(state, batch, rng, frozen):
        new_state, metrics = train_step(state, batch, rng, frozen)
        finite = training.update_is_finite(metrics, new_state)
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        return kept.replace(step=new_state.step), metrics
    return step


def per_leaf_compile_seconds(leaves) -> float:
    """Compiling `checksums._sums` once a distinct leaf shape, dtype and sharding."""
    jax.clear_caches()
    start, seen = time.perf_counter(), set()
    for leaf in leaves:
        key = (leaf.shape, leaf.dtype, leaf.sharding)
        if key not in seen:
            seen.add(key)
            jax.jit(checksums._sums).lower(leaf).compile()
    return time.perf_counter() - start


def compile_seconds(fn, *args, **jit_kwargs) -> float:
    return compiled(fn, *args, **jit_kwargs)[1]


def compiled(fn, *args, **jit_kwargs):
    """(the compiled program, seconds it took), nothing reused from earlier compilations."""
    jax.clear_caches()
    start = time.perf_counter()
    program = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    return program, time.perf_counter() - start


def step_seconds(program, args, steps: int = 3) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        out = program(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def main(argv):
    del argv
    jax.config.update("jax_enable_compilation_cache", False)
    config = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", FLAGS.variant)
    task = vqgan.VQGANTask(config)
    mesh = parallel.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    steps = task.load(mesh)
    rng = jax.random.key(0)
    state = parallel.create_sharded(task.init_state, mesh, rng)[0]
    size = config.data.image_size
    batch = {"image": jax.random.uniform(rng, (config.data.batch_size, size, size, 3),
                                         minval=-1.0, maxval=1.0)}
    step_args = (state, batch, rng, steps.frozen)

    def init(r):
        return nn.unbox(task.init_state(r))

    programs = {
        "init, default level": lambda: compile_seconds(init, rng),
        "init, run_once()": lambda: compile_seconds(init, rng,
                                                    compiler_options=compile_options.run_once()),
        "step, bare": lambda: compile_seconds(steps.train_step, *step_args),
        "step + guard, cond (used)": lambda: compile_seconds(
            training.skip_nonfinite(steps.train_step), *step_args),
        "step + guard, where per leaf": lambda: compile_seconds(
            where_guard(steps.train_step), *step_args),
        "checksums, one program": lambda: compile_seconds(
            lambda leaves: [checksums._sums(x) for x in leaves], jax.tree.leaves(state)),
        "checksums, one a leaf (used)": lambda: per_leaf_compile_seconds(jax.tree.leaves(state)),
    }
    times = {name: [] for name in programs}
    for _ in range(FLAGS.repeats):
        for name, run in programs.items():
            times[name].append(run())
    print(f"vqgan_shapes:{FLAGS.variant}, {jax.device_count()} device(s) visible, one used, "
          f"median of {FLAGS.repeats} compilations")
    for name, seconds in times.items():
        print(f"  {name:32s} {statistics.median(seconds):7.2f} s")
    med = {name: statistics.median(s) for name, s in times.items()}
    print(f"  init speed-up from run_once(): {med['init, default level'] / med['init, run_once()']:.1f}x")
    print(f"  guard: where / cond = "
          f"{med['step + guard, where per leaf'] / med['step + guard, cond (used)']:.1f}x")
    print(f"  checksums: one program / one a leaf = "
          f"{med['checksums, one program'] / med['checksums, one a leaf (used)']:.1f}x")

    programs = {"step, bare": steps.train_step,
                "step + guard, cond (used)": training.skip_nonfinite(steps.train_step),
                "step + guard, where per leaf": where_guard(steps.train_step)}
    programs = {name: compiled(fn, *step_args)[0] for name, fn in programs.items()}
    for program in programs.values():
        jax.block_until_ready(program(*step_args))  # warm-up
    runs = {name: [] for name in programs}
    for _ in range(FLAGS.repeats):
        for name, program in programs.items():
            runs[name].append(step_seconds(program, step_args))
    print(f"seconds a step (median of {FLAGS.repeats} rounds of 3 steps)")
    for name, seconds in runs.items():
        print(f"  {name:32s} {statistics.median(seconds):7.3f} s")


if __name__ == "__main__":
    app.run(main)
