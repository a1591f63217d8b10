"""Fine-tuning a stage from a trained run (`finetune.init_from`): which weights train, and how
a fine-tuned run's weights are put back together for sampling.

Every stage reads `finetune.init_from` the same way, as the workdir of a trained run of its
own stage whose weights it starts from (`copy_weights`; the tokenizer's decoder fine-tuning,
tasks/vqgan.py, uses it too). The masked token stages (base, SR) train in one of two ways:

- `FullWeights` (`finetune.lora.rank` 0): every parameter trains, starting from the run's
  EMA weights; the checkpoints are full ones, as in any run.
- `LoraWeights` (rank > 0, models/lora.py): the pretrained weights are read once into the
  steps' `frozen` (placed by their logical axes, never in the train state, so neither the
  optimiser nor a checkpoint holds them) and only the adapters are the state's `params`:
  its checkpoints are adapters + their optimiser state, a small fraction of the model.

A fine-tuned run opens like any run of its stage: `sampling_weights` rebuilds its EMA weights
(pretrained + adapters x `lora_scale` for a LoRA run; a LoRA run fine-tuned from another
reads that one the same way, recursively), and `merged_state` makes them a standalone state.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import numpy as np
from absl import logging

from muse_jax import parallel, runs
from muse_jax.config import ConfigError
from muse_jax.models import lora

# The logical names of the adapters' rank axis must be in the one rules table.
assert any(name == lora.RANK_AXIS for name, _ in parallel.LOGICAL_AXIS_RULES)


def copy_weights(target, source, where: str) -> tuple[Any, list[str]]:
    """(`target` with every leaf that `source` has at the same path, the paths it lacks).

    `target`'s leaves are placed arrays or `ShapeDtypeStruct`s with shardings: the copies get
    their dtype and sharding. Shapes must agree (a `ConfigError` names the first that does not).
    """
    flat_source = flax.traverse_util.flatten_dict(flax.core.unfreeze(source))
    flat_target = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
    merged, missing = {}, []
    for path, value in flat_target.items():
        if path in flat_source:
            loaded = flat_source[path]
            if tuple(loaded.shape) != tuple(value.shape):
                raise ConfigError(f"{where}: parameter {'/'.join(path)} has shape {loaded.shape}, "
                                  f"the config expects {value.shape}")
            merged[path] = parallel.put(np.asarray(loaded, value.dtype), value.sharding)
        else:
            merged[path], missing = value, missing + ["/".join(path)]
    return flax.traverse_util.unflatten_dict(merged), missing


def uses_lora(config) -> bool:
    """Whether `config` (a run's, possibly from before the `finetune` block) trains adapters."""
    finetune = config.get("finetune")
    return bool(finetune and "lora" in finetune and finetune.lora.rank > 0)


def check_config(c) -> None:
    """The `finetune` settings of a masked token stage."""
    f = c.finetune
    if f.lora.rank < 0:
        raise ConfigError(f"finetune.lora.rank must be >= 0, got {f.lora.rank}")
    # An empty finetune.init_from with rank > 0 fails when the weights load (one line naming
    # the key), not here: the dry run sizes a LoRA fine-tune before the base run exists.
    if not 0.0 <= f.lora.dropout < 1.0:
        raise ConfigError(f"finetune.lora.dropout must lie in [0, 1), got {f.lora.dropout}")
    if not f.lora.rank:
        return
    known = targets(c)
    unknown = sorted(set(f.lora.targets) - set(known))
    if unknown or not f.lora.targets:
        raise ConfigError(f"finetune.lora.targets {tuple(f.lora.targets)}: each must be one of "
                          f"{sorted(known)}")


def targets(config):
    """The LoRA target table (models/lora.py) of `config`'s model, by `model.kind`: the
    tables name parameter paths, which differ between models."""
    kind = config.model.get("kind", "muse")
    if kind not in lora.MODEL_TARGETS:
        raise ConfigError(f"model.kind {kind!r} has no LoRA targets (finetune.lora.rank > 0 "
                          f"needs one of {sorted(lora.MODEL_TARGETS)})")
    return lora.MODEL_TARGETS[kind]


def pretrained_weights(run: runs.Run, abstract=None):
    """The EMA weights `run` samples with (a LoRA run's merged at scale 1), as host arrays, or
    with `abstract` (ShapeDtypeStructs with shardings) copied into its shapes and placement."""
    weights = sampling_weights(run)
    if abstract is None:
        return weights
    placed, missing = copy_weights(abstract, weights, f"finetune.init_from {run.path}")
    if missing:
        raise ConfigError(f"finetune.init_from {run.path} has no parameter {missing[0]} (and "
                          f"{len(missing) - 1} more): its model block differs from the config's")
    return placed


def sampling_weights(run: runs.Run, lora_scale: float = 1.0):
    """`run`'s EMA weights as sampling uses them: for a LoRA run its pretrained run's weights
    with the adapters added at `lora_scale` x alpha / rank (0: the pretrained model)."""
    state = run.state()
    logging.info("weights of %s: step %d", run.path, int(state["step"]))
    if not uses_lora(run.config):
        if lora_scale != 1.0:
            raise ConfigError(f"--lora_scale {lora_scale}: {run.path} is not a LoRA fine-tune")
        return state["ema_params"]
    source = runs.open_run(run.config.finetune.init_from, run.config.stage, "finetune.init_from")
    spec = run.config.finetune.lora
    return lora.apply(sampling_weights(source), state["ema_params"],
                      lora_scale * lora.scale(spec.alpha, spec.rank))


def merged_state(run: runs.Run, lora_scale: float = 1.0) -> dict:
    """A standalone train state of `run` for `checkpoint.save_state`: its sampling weights
    as both params and EMA, no optimiser state (it is not resumable: a new fine-tune is)."""
    weights = jax.device_get(sampling_weights(run, lora_scale))
    return {"step": np.asarray(run.state()["step"]), "params": weights, "ema_params": weights,
            "opt_state": {}}


def export_merged(workdir: str, out: str, lora_scale: float = 1.0) -> str:
    """Writes the LoRA fine-tune `workdir` as a standalone run in `out`: its config with LoRA
    off and no `init_from`, and one checkpoint of the merged weights (`merged_state`).
    Returns `out`. Sampling it equals sampling `workdir` (at `lora_scale`), without the base."""
    from etils import epath

    from muse_jax import checkpoint

    for stage in ("base", "sr"):
        try:
            run = runs.open_run(workdir, stage)
            break
        except ConfigError:
            if stage == "sr":
                raise
    if not uses_lora(run.config):
        raise ConfigError(f"--workdir {workdir} is not a LoRA fine-tune (finetune.lora.rank 0): "
                          "it is standalone already")
    if epath.Path(out, "config.json").exists():
        raise ConfigError(f"--out {out} holds a run already; name a new directory")
    state = merged_state(run, lora_scale)
    epath.Path(out).mkdir(parents=True, exist_ok=True)
    config = run.config.copy_and_resolve_references()
    with config.unlocked():
        config.finetune.init_from = ""
        config.finetune.lora.rank = 0
    runs.save_config(out, config)
    checkpoint.save_state(str(epath.Path(out) / "checkpoints"), int(state["step"]), state)
    return out


class FullWeights:
    """Every parameter trains (a run from scratch, or a full fine-tune)."""

    def __init__(self, config):
        self.init_from = config.finetune.init_from if "finetune" in config else ""
        self.stage = config.stage

    def trainable(self, rng, params):
        """The state's `params` of a freshly initialised model's `params`: all of them."""
        del rng
        return params

    def load(self, abstract_params) -> dict:
        """Nothing the steps need besides the state."""
        del abstract_params
        return {}

    def start_params(self, params):
        """The params a fresh run starts from: the `init_from` run's EMA weights, if any."""
        if not self.init_from:
            return params
        run = runs.open_run(self.init_from, self.stage, "finetune.init_from")
        return pretrained_weights(run, params)

    def train_weights(self, trainable, frozen, rng):
        del frozen, rng
        return trainable

    def weights(self, trainable, frozen):
        del frozen
        return trainable


class LoraWeights:
    """Adapters on the `finetune.lora.targets` projections of the frozen `init_from` weights."""

    def __init__(self, config):
        f = config.finetune
        self.init_from, self.stage = f.init_from, config.stage
        self.rank, self.targets, self.dropout = f.lora.rank, tuple(f.lora.targets), f.lora.dropout
        self.multiplier = lora.scale(f.lora.alpha, f.lora.rank)
        self.table = targets(config)

    def trainable(self, rng, params):
        """Fresh adapters (B zero) for `params`, boxed with their logical axes."""
        return lora.init(rng, params, self.table, self.targets, self.rank)

    def load(self, abstract_params) -> dict:
        """{"pretrained": the `init_from` run's EMA weights}, placed as `abstract_params()`
        (ShapeDtypeStructs with shardings) says.

        They are its latest checkpoint's, whenever this runs: the adapters fit the weights
        they were trained on, so the `init_from` run must not train on meanwhile (merge_lora
        makes a fine-tune independent of it). The step is logged.
        """
        run = runs.open_run(self.init_from, self.stage, "finetune.init_from")
        return {"pretrained": pretrained_weights(run, abstract_params())}

    def start_params(self, params):
        return params

    def train_weights(self, trainable, frozen, rng):
        return lora.apply(frozen["pretrained"], trainable, self.multiplier, self.dropout, rng)

    def weights(self, trainable, frozen):
        return lora.apply(frozen["pretrained"], trainable, self.multiplier)


def create(config) -> FullWeights | LoraWeights:
    return LoraWeights(config) if uses_lora(config) else FullWeights(config)
