"""CPU a training batch costs from precomputed inputs: grain's per-example chain beside
`pipeline.PrecomputedBatches`, which `train_iterator` uses for them.

    .venv/bin/python benchmarks/precomputed_batches.py                  # after `make demo`
    .venv/bin/python benchmarks/precomputed_batches.py --workdir=W --batches=300

Reads the demo's precomputed train split (`configs/base_shapes.py:demo` on the MiniLM
embeddings and tokens under --workdir) through grain iterators with the train iterator's read
threads (`pipeline.READ_OPTIONS`), and reports the process's CPU seconds (every thread's) a
batch of 32: on a CPU host the train step's devices run on the same cores, so that CPU is
taken from the step. Rounds alternate between the paths; medians are printed, then their
ratio. Both paths give the same batches (tests/test_precomputed_inputs.py).
"""
from __future__ import annotations

import statistics
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Where `make demo` left its inputs.")
_BATCHES = flags.DEFINE_integer("batches", 200, "Batches a round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds a path.")


def main(argv) -> None:
    del argv
    from muse_jax import demo
    from muse_jax.data import pipeline

    base = demo.configs(_WORKDIR.value)[1]
    data, seed = base.data, base.seed
    source = pipeline.create_source(data, "train", seed)
    paths = {
        "example chain": pipeline.example_batches(source, data, seed, 0, 1, True),
        "PrecomputedBatches": pipeline.PrecomputedBatches(source, seed, data.batch_size, 0, 1,
                                                          True),
    }
    seconds = {name: [] for name in paths}
    for round_ in range(_ROUNDS.value):
        for name, ds in paths.items():
            batches = iter(ds[round_ * (_BATCHES.value + 1):].to_iter_dataset(
                pipeline.READ_OPTIONS))
            next(batches)  # opens the record files, starts the threads
            start = time.process_time()
            for _ in range(_BATCHES.value):
                next(batches)
            seconds[name].append((time.process_time() - start) / _BATCHES.value)
    print(f"{source.__class__.__name__} train split of {_WORKDIR.value}, batch {data.batch_size}, "
          f"{_BATCHES.value} batches x {_ROUNDS.value} rounds, {pipeline.READ_OPTIONS}")
    median = {name: statistics.median(s) for name, s in seconds.items()}
    for name, value in median.items():
        print(f"  {name:20s} {value * 1e3:6.2f} ms of CPU a batch")
    ratio = median["example chain"] / median["PrecomputedBatches"]
    print(f"  ratio: the example chain costs {ratio:.2f}x")


if __name__ == "__main__":
    app.run(main)
