"""The base stage end to end on a tiny tokenizer: training, evaluation, bad configs, dry run."""
import json

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import ONE_FAST_DEVICE, one_device, one_device_mesh, run_module
from muse_jax import config as config_lib
from muse_jax import metrics, optimizers, tasks, training
from muse_jax.config import ConfigError


def _base(tokenizer_dir, **overrides):
    c = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "tiny")
    c.tokenizer.workdir = str(tokenizer_dir)
    for key, value in overrides.items():
        block, name = key.split(".")
        c[block][name] = value
    return c


@pytest.mark.parametrize("variant", [None, "3B"])
def test_reference_configs_validate(variant):
    config_lib.validate(config_lib.load_file(config_lib.CONFIG_DIR / "base_256.py", variant))
    config_lib.validate(config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "tiny"))


def test_a_patch_size_that_does_not_divide_the_grid_is_one_line():
    config = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "tiny")
    config.model.patch_size = 3
    with pytest.raises(ConfigError, match="model.patch_size 3 does not divide model.grid_size 16"):
        tasks.create(config).check_config()


@pytest.mark.slow
def test_tiny_base_run_trains_and_evaluates(tokenizer_dir, tmp_path):
    config = _base(tokenizer_dir, **{"eval.num_samples": 2})
    result = training.train_and_evaluate(config, str(tmp_path / "base"), devices=one_device())
    for rate in (50, 90):
        assert 0.0 <= result[f"eval_accuracy_mask{rate}"] <= 1.0
        assert np.isfinite(result[f"eval_loss_mask{rate}"])
    assert 0.0 < result["eval_mode_accuracy"] <= 1.0
    logged = metrics.read_jsonl(str(tmp_path / "base" / "metrics.jsonl"))
    assert all(np.isfinite(logged[s]["loss"]) for s in range(1, 5))
    assert all(0.0 < logged[s]["mask_rate"] <= 1.0 for s in range(1, 5))
    saved = json.loads((tmp_path / "base" / "eval.json").read_text())
    assert saved["step"] == 4
    # The sample grid of the evaluation: 2 eval images (tokenizer renders) above 2 samples.
    with Image.open(tmp_path / "base" / "samples.png") as grid:
        assert grid.size == (2 * 64, 2 * 64)
        rows = np.asarray(grid, np.float32).reshape(2, 64, 2 * 64, 3)
    assert not np.array_equal(rows[0], rows[1])


@pytest.mark.slow
def test_gradient_accumulation_matches_one_pass(tokenizer_dir):
    config = _base(tokenizer_dir, **{"model.dropout": 0.0, "masking.label_smoothing": 0.0})
    task = tasks.create(config)
    task.load(one_device_mesh())
    import flax.linen as nn
    params = nn.unbox(task.init_state(jax.random.key(0))).params
    rng = np.random.default_rng(0)
    n, length = 8, config.text.max_length
    batch = {"inputs": rng.integers(0, 65, (n, 256)), "tokens": rng.integers(0, 64, (n, 256)),
             "mask": np.zeros((n, 256), bool), "emb": rng.standard_normal((n, length, 384)),
             "text_mask": np.ones((n, length), bool)}
    batch["mask"][:, :128] = True  # the same masked count in every example: means agree exactly
    from muse_jax import masking

    def loss_fn(p, part, key):
        logits = task.model.apply({"params": p}, part["inputs"], part["emb"], part["text_mask"])
        return masking.masked_cross_entropy(logits, part["tokens"], part["mask"])

    (l1, _), g1 = optimizers.accumulate_gradients(loss_fn, params, batch, jax.random.key(0), 1)
    (l4, _), g4 = optimizers.accumulate_gradients(loss_fn, params, batch, jax.random.key(0), 4)
    np.testing.assert_allclose(l1, l4, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bad_tokenizer_or_encoder_settings(tokenizer_dir, tmp_path):
    mesh = one_device_mesh()
    cases = [
        ({"tokenizer.workdir": str(tmp_path / "none")}, "has no config.json"),
        ({"model.codebook_size": 128}, "differs from the tokenizer's 64"),
        ({"model.grid_size": 8}, "does not match"),
        ({"model.text_dim": 512}, "differs from the text encoder's width 384"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            tasks.create(_base(tokenizer_dir, **overrides)).load(mesh)


@pytest.mark.slow
@pytest.mark.parametrize("variant,low,high", [("", 0.55e9, 0.75e9), (":3B", 2.8e9, 3.4e9)])
def test_dry_run_paper_scale_base(variant, low, high):
    result = run_module("muse_jax.train", f"--config=configs/base_256.py{variant}", "--dry_run",
                        "--dry_run_json", "--num_devices=8", "--config.mesh.fsdp=8",
                        env=ONE_FAST_DEVICE, check=True)
    report = json.loads(result.stdout)
    assert low < report["params"]["total"] < high, report["params"]["total"]
    assert report["per_device_bytes"]["params"] < 4 * report["params"]["total"] / 4


def test_tokenizer_loads_from_a_relative_workdir(tokenizer_dir, monkeypatch):
    from muse_jax.tasks import vqgan as vqgan_task
    monkeypatch.chdir(tokenizer_dir.parent)
    model, params, config = vqgan_task.load_tokenizer(tokenizer_dir.name)
    assert config.model.codebook_size == 64 and model.downsample_factor == 4
    assert params["quantizer"]["codebook"].shape == (64, config.model.code_dim)


@pytest.mark.slow
def test_adafactor_with_accumulation_and_the_ema(tokenizer_dir):
    import flax.linen as nn
    from muse_jax.data import pipeline

    config = _base(tokenizer_dir, **{"optim.name": "adafactor", "optim.accum_steps": 2,
                                     "optim.ema_decay": 0.99, "optim.warmup_steps": 0})
    task = tasks.create(config)
    mesh = one_device_mesh()
    steps = task.load(mesh)
    frozen = steps.frozen
    state = nn.unbox(task.init_state(jax.random.key(0)))
    init = state.params
    batch = steps.prepare_batch(next(pipeline.train_iterator(config, keep_caption=True)))
    step = jax.jit(steps.train_step)
    state, metrics_ = step(state, batch, jax.random.key(1), frozen)
    assert np.isfinite(float(metrics_["loss"])) and 0.0 <= float(metrics_["accuracy"]) <= 1.0
    # First step: the EMA's warm-up decay is min(0.99, 1/10) = 0.1.
    for e, p, p0 in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params),
                        jax.tree.leaves(init)):
        np.testing.assert_allclose(e, 0.1 * p0 + 0.9 * p, rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(p, p0) for p, p0 in zip(jax.tree.leaves(state.params),
                                                          jax.tree.leaves(init)))
