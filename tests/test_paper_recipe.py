"""The paper's optimiser recipe (Adafactor, base_256.py's optim block) learns, on a small model.

A shrunken base_256 (`configs/base_shapes.py:paper`: its optimiser settings kept, the lr and
warm-up scaled for a short run) trains on shapes with the tiny tokenizer; its masked-token
accuracy must clearly beat always predicting the most frequent token. Width 128 makes the
attention and MLP matrices large enough (>= 128 a side) for Adafactor to factor their second
moments, as it does at paper scale. `benchmarks/paper_recipe.py` draws the learning curves of
this recipe beside AdamW's on the demo tokenizer.
"""
import pytest
from conftest import one_device

from muse_jax import config as config_lib
from muse_jax import training


def paper_recipe(tokenizer_dir, **overrides):
    c = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "paper")
    c.tokenizer.workdir = str(tokenizer_dir)
    c.model.codebook_size = 64  # the tiny tokenizer's
    c.model.depth = 2
    # 2x2 tokens a position and MiniLM's first two layers, as the demo: the same accuracy at a
    # third of the time (2026-12-04, 300 steps: 52.9% at mask rate 0.5 in 56 s, against 52.6% in
    # 139 s with 256 positions and all six layers; the most frequent token 29.8%).
    c.model.patch_size = 2
    c.text.num_layers = 2
    c.data.batch_size = 16
    c.data.eval_batch_size = 64
    c.data.eval_size = 128
    c.eval.num_samples = 0
    c.train.num_steps = 300
    c.train.eval_every = c.train.checkpoint_every = 300
    for key, value in overrides.items():
        block, name = key.split(".")
        c[block][name] = value
    return c


def test_paper_recipe_keeps_the_papers_optimiser():
    paper = config_lib.reference("base").optim
    recipe = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "paper").optim
    for key in ("name", "b1", "b2", "weight_decay", "schedule", "grad_clip",
                "multiply_by_parameter_scale"):
        assert recipe[key] == paper[key], key
    assert (paper.name, paper.b1, paper.b2, paper.weight_decay) == ("adafactor", 0.9, 0.96, 0.045)


@pytest.mark.slow
def test_shrunken_paper_recipe_learns_beyond_the_most_frequent_token(tokenizer_dir, tmp_path):
    result = training.train_and_evaluate(paper_recipe(tokenizer_dir), str(tmp_path / "paper"),
                                         devices=one_device())
    mode = result["eval_mode_accuracy"]
    for rate in (50, 90):
        accuracy = result[f"eval_accuracy_mask{rate}"]
        # Clearly: half as many right again as the baseline, and 15 points above it (measured
        # 2026-12-04: 52.9% at mask rate 0.5, 51.8% at 0.9, against 29.8%).
        assert accuracy > 1.5 * mode and accuracy > mode + 0.15, (rate, accuracy, mode)
