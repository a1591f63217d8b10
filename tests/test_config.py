"""Configs load, validate against their stage's reference, and bad ones fail in one line."""
import os
import subprocess
import sys

import ml_collections
import pytest

from conftest import ONE_FAST_DEVICE, REPO, run_module
from muse_jax import config as config_lib
from muse_jax import errors


def _shapes(variant="tiny"):
    return config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", variant)


@pytest.mark.parametrize("name,variant", [("vqgan_256.py", None), ("vqgan_256.py", "finetune"),
                                          ("vqgan_shapes.py", None), ("vqgan_shapes.py", "tiny")])
def test_shipped_configs_validate(name, variant):
    config_lib.validate(config_lib.load_file(config_lib.CONFIG_DIR / name, variant))


def test_variant_syntaxes_agree():
    path = config_lib.CONFIG_DIR / "vqgan_shapes.py"
    a = config_lib.load_file(path, "tiny")
    b = config_lib.load_file(path, "variant=tiny")
    assert a.to_dict() == b.to_dict()
    assert a.train.num_steps != config_lib.load_file(path).train.num_steps


def test_unknown_key_is_named():
    c = _shapes()
    with c.unlocked():
        c.model.chanels = 3
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key config\.model\.chanels"):
        config_lib.validate(c)


def test_wrong_type_is_named():
    # ConfigDict itself refuses retyping a field, so a config *file* is where this comes from.
    raw = _shapes().to_dict()
    raw["model"]["channels"] = "wide"
    c = ml_collections.ConfigDict(raw)
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.channels must be int"):
        config_lib.validate(c)


def test_missing_key_is_named():
    c = _shapes()
    with c.unlocked():
        del c.train["log_every"]
    with pytest.raises(config_lib.ConfigError, match=r"config\.train\.log_every is missing"):
        config_lib.validate(c)


def test_int_accepted_where_float_expected():
    c = _shapes()
    c.optim.lr = 1
    config_lib.validate(c)


def test_flag_error_names_override():
    argv = ["train", "--config=configs/vqgan_shapes.py", "--config.model.bogus=1"]
    assert errors.flag_error(argv, AttributeError("'bogus'")) == (
        "unknown config key config.model.bogus (--config.model.bogus)")
    # What ml_collections raises for a near miss: the hint kept, no repr'd newline.
    argv = ["train", "--config=configs/vqgan_shapes.py", "--config.optim.lrr=1"]
    error = AttributeError(KeyError('\'lrr\'\nDid you mean "lr" instead of "lrr"?'))
    assert errors.flag_error(argv, error) == (
        'unknown config key config.optim.lrr (--config.optim.lrr); Did you mean "lr" instead '
        'of "lrr"?')


def test_the_tasks_and_the_sampling_commands_import_no_tensorflow():
    """clu's TensorBoard writer imports TensorFlow (5.4 s a process on a 2-core CPU): only
    `metrics.create_writer`, which training calls, may pull it in, not a config rejected before
    training, `sample` or `evaluate`."""
    code = ("import sys; from muse_jax import evaluate, metrics, sample, tasks, training; "
            "from muse_jax.tasks import base, sr, vqgan; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'clu')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.stdout.strip() == "[]", result.stdout


BAD_INPUTS = {
    "unknown key": (["--config=configs/vqgan_shapes.py:tiny", "--config.model.bogus=1"],
                    "unknown config key config.model.bogus"),
    "near-miss key": (["--config=configs/vqgan_shapes.py:tiny", "--config.optim.lrr=1"],
                      'unknown config key config.optim.lrr (--config.optim.lrr); Did you mean'),
    "NaN learning rate": (["--config=configs/vqgan_shapes.py:tiny", "--config.optim.lr=nan"],
                          "config key optim.lr must be finite and >= 0, got nan"),
    "wrong type": (["--config=configs/vqgan_shapes.py:tiny", "--config.optim.lr=fast"],
                   "--config.optim.lr=fast"),
    "missing config file": (["--config=configs/nope.py"], "config file configs/nope.py not found"),
    "unknown variant": (["--config=configs/vqgan_shapes.py:huge"], "unknown variant 'huge'"),
    "unwritable workdir": (["--config=configs/vqgan_shapes.py:tiny", "--workdir=/proc/muse"],
                           "workdir /proc/muse is not writable"),
    "missing dataset path": (["--config=configs/vqgan_shapes.py:tiny",
                              "--config.data.source=image_folder",
                              "--config.data.path=/nonexistent/images"],
                             "dataset path '/nonexistent/images' does not exist"),
    "mesh larger than the devices": (["--config=configs/vqgan_shapes.py:tiny",
                                      "--config.mesh.data=2"], "needs 2 devices, but 1 are"),
    "eval size not a batch multiple": (["--config=configs/vqgan_shapes.py:tiny",
                                        "--config.data.eval_size=20"],
                                       "data.eval_size 20 is not a multiple"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_nonzero(case, tmp_path):
    args, message = BAD_INPUTS[case]
    if not any(a.startswith("--workdir") for a in args):
        args = [*args, f"--workdir={tmp_path / 'run'}"]
    result = run_module("muse_jax.train", *args, env=ONE_FAST_DEVICE, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_unknown_sampling_preset_is_named():
    config = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "tiny")
    config_lib.validate(config)  # "muse", the reference's
    config.eval.preset = "amusd"
    with pytest.raises(config_lib.ConfigError,
                       match="config key eval.preset must be 'muse' or 'amused', got 'amusd'"):
        config_lib.validate(config)


@pytest.mark.parametrize("temperature", [-0.5, float("nan"), float("inf")])
def test_a_bad_sampling_temperature_is_named(temperature):
    config = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "demo")
    config_lib.validate(config)  # 0.5, the demo's
    config.eval.temperature = temperature
    with pytest.raises(config_lib.ConfigError, match=f"config key eval.temperature must be finite "
                       f"and >= 0 \\(0: the most likely token\\), got {temperature}"):
        config_lib.validate(config)
