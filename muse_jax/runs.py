"""A trained run's directory: written by training, opened by everything that uses a run.

A run is its `config.json` and `checkpoints/` under one directory, local or any URL that
`etils.epath` reads (gs://...). Training, sampling, evaluation, the demo and the dry run all
open runs here, so the checks (is there a run, is it the stage wanted, is there a checkpoint)
and their messages are the same everywhere.

Paths a run depends on (its tokenizer, the low-res tokenizer of an SR run, ...) are written
to config.json relative to the run's own directory when both are local, and resolved against
it when read: a run opens from any current directory, and a set of runs moved or copied
together keeps working. A path that names no run of the stage wanted is a `ConfigError`: a
config key's (or a flag's) value that cannot work.
"""
from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from typing import Any

import ml_collections
from etils import epath

from muse_jax import checkpoint
from muse_jax.config import ConfigError

# Config keys that name another local path a run reads. `data.*` paths matter to a resumed
# training run only, which reads them from its config file; the record is kept consistent.
PATH_KEYS = ("tokenizer.workdir", "low_res.tokenizer_workdir", "finetune.init_from",
             "text.path", "text.tokenizer_path", "loss.perceptual_weights", "data.path", "data.eval_path",
             "data.train_text_embeddings", "data.eval_text_embeddings", "data.train_tokens",
             "data.eval_tokens")
# What trains a run of each stage, for the message when there is none.
_EXAMPLE_CONFIG = {"vqgan": "configs/vqgan_shapes.py", "base": "configs/base_shapes.py",
                   "sr": "configs/sr_shapes.py"}


def _is_url(path: str) -> bool:
    return "://" in path


def _keys(config: ml_collections.ConfigDict):
    for key in PATH_KEYS:
        block, name = key.split(".")
        if block in config and name in config[block] and config[block][name]:
            yield block, name


# Config keys that decide the train state's structure and shapes: a run resumed with another
# value cannot read its checkpoints. A block name covers its keys but for NOT_SHAPE's.
SHAPE_KEYS = ("stage", "model", "gan.enabled", "gan.channels", "gan.num_layers", "optim.name")
NOT_SHAPE = ("model.dropout", "model.dtype", "model.remat", "model.beta")


def _flat(config, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            out.update(_flat(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _decides_shapes(key: str) -> bool:
    return (any(key == k or key.startswith(k + ".") for k in SHAPE_KEYS)
            and key not in NOT_SHAPE)


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError, naming the keys that differ, if `workdir` already holds a run whose
    stage or parameter shapes differ from `config`'s: resuming it would fail, and writing the
    new config.json over the old would leave the old run unloadable."""
    config_file = epath.Path(workdir) / "config.json"
    if not config_file.exists():
        return
    try:
        old = _flat(json.loads(config_file.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{config_file} is not valid JSON ({e}); move it away, or choose "
                          f"another --workdir") from None
    new = _flat(json.loads(config.to_json_best_effort()))
    if old.get("stage") != new.get("stage"):
        raise ConfigError(f"{workdir} holds a {old.get('stage')!r}-stage run and this config "
                          f"trains the {new.get('stage')!r} stage (key stage differs); its "
                          f"config.json is kept; choose another --workdir")
    differ = sorted(k for k in set(old) | set(new)
                    if _decides_shapes(k) and old.get(k) != new.get(k))
    if differ:
        shown = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:6])
        more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
        raise ConfigError(f"{workdir} holds a run whose config differs in keys that decide the "
                          f"parameters: {shown}{more}; its config.json is kept; choose another "
                          f"--workdir, or resume it with its own config")


def differing_keys(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
    """The config keys, but for the paths the run reads, whose value in `workdir`'s
    config.json differs from `config`'s (all of them when there is no config.json): a finished
    run is a result of this config only if none differs."""
    config_file = epath.Path(workdir) / "config.json"
    new = _flat(json.loads(config.to_json_best_effort()))
    if not config_file.exists():
        return sorted(new)
    old = _flat(json.loads(config_file.read_text()))
    return sorted(k for k in set(old) | set(new)
                  if k not in PATH_KEYS and old.get(k) != new.get(k))


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `workdir/config.json`, local dependency paths relative to `workdir`, once
    `check_workdir_config` has found the config fits what the workdir holds."""
    check_workdir_config(workdir, config)
    record = config.copy_and_resolve_references()
    if not _is_url(workdir):
        with record.unlocked():
            for block, name in _keys(record):
                value = record[block][name]
                if not _is_url(value):
                    record[block][name] = os.path.relpath(os.path.abspath(value),
                                                          os.path.abspath(workdir))
    epath.Path(workdir, "config.json").write_text(record.to_json_best_effort(indent=2))


def save_run(workdir: os.PathLike | str, config: ml_collections.ConfigDict, state: dict) -> None:
    """Writes a run that was not trained here (an import, a shipped model): `config` as its
    config.json, `state` as the checkpoint of step `state["step"]`."""
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    save_config(str(workdir), config)
    checkpoint.save_state(str(epath.Path(workdir) / "checkpoints"), int(state["step"]), state)


def resolve(workdir: str, path: str) -> str:
    """A path named in `workdir`'s config.json, as this process can open it."""
    if not path or _is_url(path) or os.path.isabs(path):
        return path
    if _is_url(workdir):  # gs://bucket/runs/base + ../tokenizer -> gs://bucket/runs/tokenizer
        scheme, rest = workdir.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"
    return os.path.normpath(os.path.join(os.path.abspath(workdir), path))


@dataclasses.dataclass(frozen=True)
class Run:
    """An opened run: where it is and its config, dependency paths resolved against it."""
    path: str
    config: ml_collections.ConfigDict

    def state(self, sharding=None) -> Any:
        """The latest readable train state (see `checkpoint.load_state`, whose
        `CheckpointError` names what could not be read)."""
        try:
            return checkpoint.load_state(str(epath.Path(self.path) / "checkpoints"), sharding)
        except FileNotFoundError:
            raise checkpoint.CheckpointError(f"no checkpoint found under {self.path}/checkpoints") from None


def open_run(workdir: str | None, stage: str, what: str = "--workdir") -> Run:
    """The run in `workdir`, checked to be of `stage`; `what` names it in messages (a flag or
    a config key), e.g. `error: tokenizer.workdir 'x' has no config.json: train ...`."""
    config_file = epath.Path(workdir or ".") / "config.json"
    if not workdir or not config_file.is_file():
        raise ConfigError(f"{what} {workdir!r} has no config.json: train a {stage} run first "
                        f"(python -m muse_jax.train --config={_EXAMPLE_CONFIG[stage]} "
                        f"--workdir=DIR)")
    try:
        config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config_file} is not valid JSON: {e}") from None
    if config.get("stage") != stage:
        raise ConfigError(f"{workdir} is a {config.get('stage')!r} run; {what} needs a "
                        f"{stage}-stage run")
    with config.unlocked():
        for block, name in _keys(config):
            config[block][name] = resolve(workdir, config[block][name])
    return Run(path=workdir if _is_url(workdir) else os.path.abspath(workdir), config=config)
