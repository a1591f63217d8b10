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
    return module.get_config(arg) if arg is not None else module.get_config()


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
    """Raises ConfigError naming the first unknown, missing or mistyped key."""
    if "stage" not in config:
        raise ConfigError("config has no 'stage' key (one of vqgan, base, sr)")
    _compare(config, reference(config.stage), "config")


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
