"""The contract between the train loop (muse_jax/train.py) and a training stage.

A stage comes in two parts, so that what needs no files stays usable without them:
`Task`, built from the config alone (the dry run, muse_jax/plan.py, uses nothing else), and
`Steps`, which `Task.load` returns once the frozen models are read and placed on the mesh.
Nothing is filled in later: a `Steps` is complete when it exists.
"""
from __future__ import annotations

from typing import Any, Protocol

import jax
import numpy as np


class Task(Protocol):
    """A stage as its config defines it. The loop, in order:

    1. `tasks.create(config)`, then `check_config()`: bad settings fail before any work.
    2. `uses_captions`: whether the process-local batches it reads must keep raw captions.
    3. `load(mesh)` -> `Steps`: the frozen models, read and placed (files, no training).
    4. `init_state(rng)`: traced by `jax.eval_shape` and, for a fresh run, by a jit whose
       `out_shardings` come from its logical axis names; a resumed run restores it instead.
    5. After each evaluation, `summarize_eval(totals)` of the summed `Steps.eval_step` outputs.
    """
    uses_captions: bool

    def check_config(self) -> None:
        """Raises `ConfigError` naming the setting that cannot work."""

    def init_state(self, rng: jax.Array) -> Any:
        """A fresh train state (a pytree whose leaves may be logically partitioned); traceable."""

    def load(self, mesh: jax.sharding.Mesh) -> Steps:
        """The stage's steps with its frozen models read and their weights placed on `mesh`."""

    def summarize_eval(self, totals: dict) -> dict[str, float]:
        """Metrics of the evaluation from the host copies of the summed `eval_step` outputs."""


class Steps(Protocol):
    """What the loop compiles and runs. `frozen` (pretrained weights no optimiser sees, placed)
    is passed back to every step as an argument, so that jit sees arrays, not constants:

        state = steps.start_state(fresh)                       # fresh runs only
        batch = global_batch(steps.prepare_batch(local))       # every step
        state, metrics = train_step(state, batch, rng, steps.frozen)   # jitted, state donated
        sums = eval_step(state, batch, rng, steps.frozen)      # jitted, replicated output
        images = steps.summary_images(state, first_eval_batch, steps.frozen)

    `train_step`'s metrics must hold "loss" and may hold "*_loss" and "*grad_norm": the loop
    skips an update whose such values are not finite (train.skip_nonfinite). `eval_step`
    returns sums over its batch, so that batches and processes add up.
    """
    frozen: Any

    def start_state(self, state: Any) -> Any:
        """The state a fresh run starts from: `state`, or with weights of another run copied in."""

    def prepare_batch(self, local: dict) -> dict:
        """Process-local numpy batch -> the numpy arrays the steps take (host work: tokenising
        captions); its leaves are then assembled into global arrays along the batch axis."""

    def train_step(self, state: Any, batch: dict, rng: jax.Array,
                   frozen: Any) -> tuple[Any, dict]:
        """One update: (new state with step + 1, scalar metrics)."""

    def eval_step(self, state: Any, batch: dict, rng: jax.Array, frozen: Any) -> dict:
        """Sums (and counts) over the batch that `Task.summarize_eval` turns into metrics."""

    def summary_images(self, state: Any, batch: dict, frozen: Any) -> dict[str, np.ndarray]:
        """Named image grids [H, W, 3] uint8 of the first eval batch, readable on every process."""
