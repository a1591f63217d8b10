"""Loading config files and checking them against the stage's reference config.

A config is a Python file whose `get_config(arg)` returns an `ml_collections.ConfigDict`.
Every stage has one reference config in `configs/` that names (and comments) every key;
any other config for that stage must use those keys with values of the same types, so a
typo fails in one line before anything compiles instead of being silently ignored.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

from muse_jax.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
REFERENCE = {"vqgan": "vqgan_256.py", "base": "base_256.py", "sr": "sr_512.py"}


class ConfigError(UserError):
    """A config key that does not exist, has the wrong type, or a value that cannot work."""


def parse_variant(arg: str | None) -> str | None:
    """`--config=file.py:variant=3B` and `--config=file.py:3B` both name variant '3B'."""
    if not arg:
        return None
    return arg.split("=", 1)[1] if arg.startswith("variant=") else arg


def load_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    spec = importlib.util.spec_from_file_location(f"_muse_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg is not None else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {path} must return an ml_collections.ConfigDict, "
                          f"got {type(config).__name__}")
    return config


def load_common():
    """configs/common.py as a module: the config blocks the stages share."""
    spec = importlib.util.spec_from_file_location("_muse_config_common", CONFIG_DIR / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference(stage: str) -> ml_collections.ConfigDict:
    if stage not in REFERENCE:
        raise ConfigError(f"config.stage must be one of {sorted(REFERENCE)}, got {stage!r}")
    return load_file(CONFIG_DIR / REFERENCE[stage])


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first unknown, missing or mistyped key, or the first
    value out of range (`check_values`)."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"the config file's get_config() must return an "
                          f"ml_collections.ConfigDict, got {type(config).__name__}")
    if "stage" not in config:
        raise ConfigError("config has no 'stage' key (one of vqgan, base, sr)")
    _compare(config, reference(config.stage), "config")
    check_values(config)


def _finite_nonnegative(v) -> bool:
    return v == v and v not in (float("inf"), float("-inf")) and v >= 0


# (key, test, what it must be): values of the right type that still cannot work. Checked
# before anything is built, so each fails in one line instead of a traceback after compiling.
VALUE_RULES = (
    ("data.batch_size", lambda v: v >= 1, ">= 1"),
    ("data.eval_batch_size", lambda v: v >= 1, ">= 1"),
    ("data.eval_size", lambda v: v >= 1, ">= 1"),
    ("data.image_size", lambda v: v >= 1, ">= 1"),
    ("train.num_steps", lambda v: v >= 0, ">= 0"),
    ("train.log_every", lambda v: v >= 1, ">= 1"),
    ("train.eval_every", lambda v: v >= 1, ">= 1"),
    ("train.checkpoint_every", lambda v: v >= 1, ">= 1"),
    ("train.keep_checkpoints", lambda v: v >= 1, ">= 1"),
    ("train.max_consecutive_nonfinite", lambda v: v >= 1, ">= 1"),
    ("train.progress_every_secs", lambda v: v > 0, "> 0"),
    ("optim.lr", _finite_nonnegative, "finite and >= 0"),
    ("optim.weight_decay", _finite_nonnegative, "finite and >= 0"),
    ("optim.grad_clip", _finite_nonnegative, "finite and >= 0 (0: off)"),
    ("optim.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("optim.cosine_span", lambda v: _finite_nonnegative(v) and v > 0, "finite and > 0"),
    ("optim.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.b2", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("gan.lr", _finite_nonnegative, "finite and >= 0"),
    ("eval.preset", lambda v: v in ("muse", "amused"), "'muse' or 'amused'"),
    ("eval.temperature", _finite_nonnegative, "finite and >= 0 (0: the most likely token)"),
)


def check_values(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for the first key of VALUE_RULES (present in `config`) out of range."""
    for key, ok, what in VALUE_RULES:
        block, name = key.split(".")
        if block not in config or name not in config[block] or config[block][name] is None:
            continue
        value = config[block][name]
        if not ok(value):
            raise ConfigError(f"config key {key} must be {what}, got {value!r}")
    data = config.get("data")
    if data is not None and data.get("source") == "shapes" and data.image_size < 24:
        raise ConfigError(f"config key data.image_size must be >= 24 with data.source='shapes' "
                          f"(muse_jax/data/shapes.py draws a 3x3 grid of objects), got "
                          f"{data.image_size}")
    if data is not None and data.eval_size < data.eval_batch_size:
        raise ConfigError(f"config key data.eval_size ({data.eval_size}) must be at least "
                          f"data.eval_batch_size ({data.eval_batch_size}): no eval batch fits")


def _compare(config, ref, prefix: str) -> None:
    for key in config.keys():
        if key not in ref:
            raise ConfigError(f"unknown config key {prefix}.{key}")
    for key in ref.keys():
        name = f"{prefix}.{key}"
        if key not in config:
            raise ConfigError(f"config key {name} is missing")
        value, expected = config[key], ref[key]
        if isinstance(expected, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"config key {name} must be a block of keys, got {value!r}")
            _compare(value, expected, name)
        elif not _same_type(value, expected):
            raise ConfigError(f"config key {name} must be {type(expected).__name__}, "
                              f"got {type(value).__name__} {value!r}")


def _same_type(value, expected) -> bool:
    if expected is None or value is None:
        return True
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(expected, bool)
    if isinstance(expected, float):
        return isinstance(value, (int, float))
    if isinstance(expected, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(expected))
