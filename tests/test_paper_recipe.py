"""The paper's optimiser recipe (Adafactor, base_256.py's optim block) learns, on a small model.

A shrunken base_256 (`configs/base_shapes.py:paper`: its optimiser settings kept, the lr and
warm-up scaled for a short run) trains on shapes with the tiny tokenizer; its masked-token
accuracy must clearly beat always predicting the most frequent token. Width 128 makes the
attention and MLP matrices large enough (>= 128 a side) for Adafactor to factor their second
moments, as it does at paper scale. `benchmarks/paper_recipe.py` draws the learning curves of
this recipe beside AdamW's on the demo tokenizer.
"""
import json

import pytest
from conftest import run_module

from muse_jax import config as config_lib

# The shrunken recipe: base_shapes.py:paper on the tiny tokenizer (its codebook of 64), 200
# steps. 2x2 tokens a position and MiniLM's first two layers, as the demo: the same accuracy at a
# third of the time (2026-12-04, 300 steps: 52.9% at mask rate 0.5 in 56 s, against 52.6% in
# 139 s with 256 positions and all six layers; the most frequent token 29.8%). 200 steps, not
# 300: 51.2% / 50.5% at mask rates 0.5 / 0.9 against 52.9% / 51.8%, in two thirds of the steps
# (2026-12-07; the 300-step run's eval every 50 steps: 34.4% at 50, 48.2% at 100, 51.1% at 150).
# Since the tiny tokenizer lost its block a level (2026-12-07) its tokens are more alike: the
# most frequent is right 52.3% of the time, the recipe 72.9% / 73.2% at 200 steps.
OVERRIDES = {"model.codebook_size": 64, "model.depth": 2, "model.patch_size": 2,
             "text.num_layers": 2, "data.batch_size": 16, "data.eval_batch_size": 64,
             "data.eval_size": 128, "eval.num_samples": 0, "train.num_steps": 200,
             "train.eval_every": 200, "train.checkpoint_every": 200}


def test_paper_recipe_keeps_the_papers_optimiser():
    paper = config_lib.reference("base").optim
    recipe = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "paper").optim
    for key in ("name", "b1", "b2", "weight_decay", "schedule", "grad_clip",
                "multiply_by_parameter_scale"):
        assert recipe[key] == paper[key], key
    assert (paper.name, paper.b1, paper.b2, paper.weight_decay) == ("adafactor", 0.9, 0.96, 0.045)


@pytest.mark.slow
def test_shrunken_paper_recipe_learns_beyond_the_most_frequent_token(tokenizer_dir, tmp_path):
    # Run as a user would, and with XLA's default optimisation: 200 steps of width 128 are the
    # one place in the suite where execution, not compiling, is the cost (at 300 steps, 70 s
    # here against 121 s under conftest's FAST_COMPILE, 2026-12-05).
    workdir = tmp_path / "paper"
    run_module("muse_jax.train", "--config=configs/base_shapes.py:paper", f"--workdir={workdir}",
               f"--config.tokenizer.workdir={tokenizer_dir}",
               *(f"--config.{key}={value}" for key, value in OVERRIDES.items()),
               env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}, check=True)
    result = json.loads((workdir / "eval.json").read_text())
    assert result["step"] == OVERRIDES["train.num_steps"]
    mode = result["eval_mode_accuracy"]
    for rate in (50, 90):
        accuracy = result[f"eval_accuracy_mask{rate}"]
        # Clearly: 15 points above the baseline, and a quarter of its errors gone (half as many
        # right again, the test's measure until 2026-12-07, cannot be reached above a baseline
        # of 67%). Measured: 20.6 / 20.9 points, 43% / 44% of the errors (30% / 29% on the
        # tokenizer with a block a level, whose baseline was 29.8%).
        removed = (accuracy - mode) / (1 - mode)
        assert accuracy > mode + 0.15 and removed > 0.25, (rate, accuracy, mode)
