"""The super-resolution stage: configs, the model's conditioning, one training run, and the
two-stage sampler (base -> SR -> high-res decoder) in-process and through `muse_jax.sample`."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import ONE_FAST_DEVICE, one_device, run_module
from muse_jax import config as config_lib
from muse_jax import sampling, tasks, training
from muse_jax.config import ConfigError
from muse_jax.data import shapes
from muse_jax.models.transformer import MaskedTransformer, SuperResTransformer
from muse_jax.tasks import sr as sr_task


def _sr_config(tokenizer_dir, **overrides):
    """sr_shapes:tiny with the tiny 64 px tokenizer on both sides (convolutional: it tokenises
    128 px images into 32x32 tokens as readily)."""
    c = config_lib.load_file(config_lib.CONFIG_DIR / "sr_shapes.py", "tiny")
    c.tokenizer.workdir = c.low_res.tokenizer_workdir = str(tokenizer_dir)
    for key, value in overrides.items():
        block, name = key.split(".")
        c[block][name] = value
    return c


@pytest.mark.parametrize("name,variant", [("sr_512.py", None), ("sr_shapes.py", None),
                                          ("sr_shapes.py", "tiny"), ("vqgan_512.py", None),
                                          ("vqgan_shapes_hr.py", None)])
def test_configs_validate(name, variant):
    config = config_lib.load_file(config_lib.CONFIG_DIR / name, variant)
    config_lib.validate(config)
    if config.stage == "sr":
        tasks.create(config).check_config()


def test_vqgan_512_makes_64x64_tokens_from_8192_codes():
    c = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_512.py")
    assert c.data.image_size // 2 ** (len(c.model.channel_mult) - 1) == 64
    assert c.model.codebook_size == 8192


@pytest.mark.parametrize("overrides,message", [
    ({"low_res.image_size": 48}, "must divide data.image_size"),
    ({"model.attention_window": 5}, "must divide model.grid_size"),
    ({"data.train_tokens": "/tmp/x", "data.eval_tokens": "/tmp/y"}, "tokenises images itself"),
])
def test_bad_sr_configs(overrides, message):
    c = _sr_config("unused", **overrides)
    with pytest.raises(ConfigError, match=message):
        tasks.create(c).check_config()


def test_low_res_box_filter_matches_a_low_res_render():
    """The low-res condition of training (a box-filtered 128 px image) is the 64 px render of the
    same scene that sampling and evaluation start from, up to rounding."""
    high, low = (shapes.ShapesSource(image_size=s, split="eval") for s in (128, 64))
    for i in range(4):
        assert shapes.parse_image(high[i]["image"]) == shapes.parse_image(low[i]["image"])
        down = sr_task.downsample(high[i]["image"][None].astype(np.float32), 64)[0]
        mse = np.mean((down - low[i]["image"].astype(np.float32)) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 45


def _tiny_models(low_res_skip=False):
    base = MaskedTransformer(codebook_size=64, grid=(16, 16), width=32, depth=1, num_heads=2,
                             mlp_dim=64)
    sr = SuperResTransformer(codebook_size=64, grid=(32, 32), low_res_codebook_size=64,
                             low_res_grid=(16, 16), width=32, depth=1, low_res_depth=1,
                             num_heads=2, mlp_dim=64, window=8, low_res_skip=low_res_skip)
    return base, sr


def test_sr_logits_read_the_low_res_tokens_and_the_precomputed_context():
    """With `low_res_skip` (the cascade test covers the model without it)."""
    _, sr = _tiny_models(low_res_skip=True)
    emb, mask = jnp.ones((2, 5, 12)), jnp.ones((2, 5), bool)
    low = jax.random.randint(jax.random.key(0), (2, 256), 0, 64)
    high = jnp.full((2, 1024), sr.mask_id, jnp.int32)
    variables = sr.init(jax.random.key(1), high, emb, mask, low)
    # Every parameter carries logical axis names.
    for leaf in jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        assert isinstance(leaf, nn.Partitioned), leaf
    params = nn.unbox(variables)["params"]

    @jax.jit
    def run(params, low):
        direct = sr.apply({"params": params}, high, emb, mask, low)
        context = sr.apply({"params": params}, emb, mask, low, method="encode_context")
        return direct, sr.apply({"params": params}, high, context, method="logits")

    assert params["skip_proj"]["kernel"].shape == (32, 32)
    direct, cached = run(params, low)
    assert direct.shape == (2, 1024, 64)
    np.testing.assert_allclose(direct, cached, atol=1e-5)
    other, _ = run(params, low.at[:, 0].set((low[:, 0] + 1) % 64))
    assert float(jnp.max(jnp.abs(other - direct))) > 1e-4


@pytest.mark.slow
def test_cascade_gives_low_res_tokens_high_res_tokens_and_images(tokenizer_dir):
    from muse_jax.tasks import vqgan as vqgan_task
    base, sr = _tiny_models()
    decoder, decoder_params, _ = vqgan_task.load_tokenizer(str(tokenizer_dir))
    b = 3
    emb, mask = jax.random.normal(jax.random.key(2), (b, 5, 12)), jnp.ones((b, 5), bool)
    canvas = jnp.full((b, 256), base.mask_id, jnp.int32)
    params = {"base": nn.unbox(base.init(jax.random.key(3), canvas, emb, mask))["params"],
              "sr": nn.unbox(sr.init(jax.random.key(4), jnp.zeros((1, 1024), jnp.int32),
                                     emb[:1], mask[:1], canvas[:1]))["params"],
              "decoder": decoder_params}
    cascade = sampling.make_cascade(base, sr, sampling.SamplingOptions(steps=3),
                                    sampling.SamplingOptions(steps=2, guidance=2.0), decoder)
    blank = jnp.full((b, 1024), sr.mask_id, jnp.int32)
    out = cascade(params, emb, mask, jnp.zeros((1, 5, 12)), mask[:1], jax.random.key(5), canvas,
                  blank)
    assert out["low_res"].shape == (b, 256) and out["tokens"].shape == (b, 1024)
    assert out["images"].shape == (b, 128, 128, 3)
    for tokens in (out["low_res"], out["tokens"]):
        assert int(jnp.min(tokens)) >= 0 and int(jnp.max(tokens)) < 64  # no [MASK] left
    # The SR stage is conditioned on the base stage's tokens: with other low-res tokens (the
    # same rng), it generates other high-res tokens.
    rng_sr = jax.random.split(jax.random.key(5))[1]
    again = sampling.make_generate(sr, sampling.SamplingOptions(steps=2, guidance=2.0))
    same = again(params["sr"], emb, mask, jnp.zeros((1, 5, 12)), mask[:1], rng_sr, blank,
                 out["low_res"])
    np.testing.assert_array_equal(same, out["tokens"])
    other = again(params["sr"], emb, mask, jnp.zeros((1, 5, 12)), mask[:1], rng_sr, blank,
                  (out["low_res"] + 1) % 64)
    assert not np.array_equal(other, out["tokens"])


@pytest.fixture(scope="module")
def runs(tiny_base, tokenizer_dir, tmp_path_factory):
    """The session's tiny base run (conftest.py) and a tiny SR run (2 steps) on the tiny
    tokenizer: (base, sr, the SR run's result)."""
    sr = tmp_path_factory.mktemp("sr_runs") / "sr"
    result = training.train_and_evaluate(_sr_config(tokenizer_dir), str(sr), devices=one_device())
    return tiny_base, sr, result


@pytest.mark.slow
def test_tiny_sr_run_trains_evaluates_and_samples_in_two_stages(runs, tmp_path):
    base, sr, result = runs
    for rate in (50, 90):
        assert 0.0 <= result[f"eval_accuracy_mask{rate}"] <= 1.0
        assert np.isfinite(result[f"eval_loss_mask{rate}"])
    logged = [json.loads(line) for line in (sr / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    # The evaluation's grid: 128 px originals, their 64 px low-res inputs upsampled, SR samples.
    with Image.open(sr / "samples.png") as grid:
        assert grid.size == (2 * 128, 3 * 128)
    out = tmp_path / "grid.png"
    run_module("muse_jax.sample", f"--workdir={base}", f"--sr_workdir={sr}",
               "--prompt=a red circle at the center", "--prompt=a blue square at the top left",
               "--num_images=2", "--steps=2", "--sr_steps=2", f"--out={out}",
               env=ONE_FAST_DEVICE, check=True)
    with Image.open(out) as grid:
        assert grid.size[1] >= 2 * 128 and grid.size[0] >= 2 * 128  # 2x2 images of 128 px
        assert grid.size[1] < 2 * 2 * 128  # not twice as many rows: one row a prompt
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["sr_steps"] == 2 and settings["sr_workdir"] == str(sr)


@pytest.mark.slow
def test_shapes_sr_evaluation_and_mismatched_runs(runs):
    from muse_jax import evaluate
    from muse_jax.errors import UserError
    base, sr, _ = runs
    options = sampling.SamplingOptions(steps=2)
    result = evaluate.evaluate(str(base), "shapes_sr", 4, options, batch_size=4,
                               sr_workdir=str(sr),
                               sr_options=sampling.SamplingOptions(steps=2))
    for part in ("real", "generated"):
        assert 0.0 <= result[part]["parse_agreement"] <= 1.0
    real = result["real"]
    assert 0 < real["psnr"] < 60 and 0 < real["psnr_bicubic"] < 60 and 0 < real["psnr_tokenizer"] < 60
    with pytest.raises(UserError, match="needs a base-stage run"):
        evaluate.evaluate(str(sr), "shapes_oracle", 1, options)
    with pytest.raises(UserError, match="needs --sr_workdir"):
        evaluate.evaluate(str(base), "shapes_sr", 1, options)


@pytest.mark.slow
def test_sr_inpainting_and_outpainting_keep_every_token_outside_the_region(runs, tmp_path):
    """Muse's text-guided inpainting at two resolutions: the input decimated and tokenized at
    the base resolution, tokenized at the SR one, the region masked in both and regenerated;
    every token outside the region is the input's, in both grids."""
    from muse_jax import evaluate, inference
    base, sr, _ = runs
    pipe = inference.load(str(base))
    sr_pipe = inference.load_sr(str(sr), pipe)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 128, 128, 3)).astype(np.float32)
    masks = np.zeros((2, 128, 128), bool)
    masks[:, 40:90, 10:60] = True
    canvas, sr_canvas = inference.inpaint_canvases(pipe, sr_pipe, images, masks)
    hole_low, hole_high = canvas == pipe.mask_id, sr_canvas == sr_pipe.mask_id
    # Patches of 8 px (low grid, in 128 px units) and 4 px (high grid) touching the region:
    # rows 40..89 and columns 10..59 are patches 5..11 and 1..7, and 10..22 and 2..14.
    assert hole_low.reshape(2, 16, 16)[0].sum() == 7 * 7
    assert hole_high.reshape(2, 32, 32)[0].sum() == 13 * 13
    np.testing.assert_array_equal(canvas[~hole_low],
                                  pipe.tokens_of(inference.decimate(images, 64))[~hole_low])
    np.testing.assert_array_equal(sr_canvas[~hole_high], sr_pipe.tokens_of(images)[~hole_high])
    options = sampling.SamplingOptions(steps=3)
    out = inference.sample_two_stage(pipe, sr_pipe, ["a red circle at the center"] * 2, options,
                                     sampling.SamplingOptions(steps=2), seed=0, canvas=canvas,
                                     sr_canvas=sr_canvas)
    np.testing.assert_array_equal(out["low_res"][~hole_low], canvas[~hole_low])
    np.testing.assert_array_equal(out["tokens"][~hole_high], sr_canvas[~hole_high])
    assert (out["tokens"] != sr_pipe.mask_id).all() and (out["low_res"] != pipe.mask_id).all()

    canvas, sr_canvas = inference.outpaint_canvases(pipe, sr_pipe, images[:1], "left", 4)
    assert (canvas.reshape(16, 16)[:, :4] == pipe.mask_id).all()
    assert (sr_canvas.reshape(32, 32)[:, :8] == sr_pipe.mask_id).all()
    assert (sr_canvas.reshape(32, 32)[:, 8:] != sr_pipe.mask_id).all()

    result = evaluate.evaluate(str(base), "shapes_inpaint", 4, options, batch_size=4,
                               sr_workdir=str(sr),
                               sr_options=sampling.SamplingOptions(steps=2))
    assert result["kept_tokens"] == 1.0 and result["kept_tokens_low_res"] == 1.0
    assert 0.0 <= result["region"] <= 1.0 and result["sr_steps"] == 2

    Image.fromarray(((images[0] + 1) * 127.5).astype(np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(masks[0].astype(np.uint8) * 255).save(tmp_path / "mask.png")
    out_png = tmp_path / "inpainted.png"
    run_module("muse_jax.sample", f"--workdir={base}", f"--sr_workdir={sr}",
               "--prompt=a red circle at the center", "--num_images=1", "--steps=2",
               "--sr_steps=2", f"--image={tmp_path / 'in.png'}", f"--mask={tmp_path / 'mask.png'}",
               f"--out={out_png}", env=ONE_FAST_DEVICE, check=True)
    with Image.open(out_png) as grid:
        assert grid.size == (128, 128)


@pytest.mark.slow
def test_sr_lora_finetune_on_an_image_folder_keeps_the_sr_run_and_starts_from_it(
        runs, tokenizer_dir, tmp_path):
    """LoRA fine-tuning of the SR stage from a trained SR run, on a few captioned 128 px images
    (the image_folder path a user has): the adapters start at zero, so `--lora_scale=0` is the
    SR run exactly; the SR run's own weights are never written; the adapters train."""
    from muse_jax import checkpoint
    from muse_jax import runs as runs_lib
    from muse_jax.tasks import finetune

    _, sr, _ = runs
    folder = tmp_path / "images"
    folder.mkdir()
    source = shapes.ShapesSource(image_size=128, split="train", seed=3, size=16)
    for i in range(16):
        Image.fromarray(source[i]["image"]).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(source[i]["caption"] + "\n")
    before = checkpoint.load_state(str(sr / "checkpoints"))
    c = _sr_config(tokenizer_dir)
    c.finetune.init_from = str(sr)
    c.finetune.lora.rank, c.finetune.lora.alpha = 2, 2.0
    c.data.source, c.data.path, c.data.min_size = "image_folder", str(folder), 64
    c.data.batch_size, c.data.eval_batch_size, c.data.eval_size = 8, 8, 8
    c.optim.weight_decay = 0.0
    training.train_and_evaluate(c, str(tmp_path / "lora"), devices=one_device())

    run = runs_lib.open_run(str(tmp_path / "lora"), "sr")
    assert finetune.uses_lora(run.config)
    off = finetune.sampling_weights(run, lora_scale=0.0)
    for a, b in zip(jax.tree.leaves(off), jax.tree.leaves(before["ema_params"])):
        np.testing.assert_array_equal(a, b)
    after = checkpoint.load_state(str(sr / "checkpoints"))
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
    adapters = checkpoint.load_state(str(tmp_path / "lora" / "checkpoints"))["params"]
    b_leaves = [np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(adapters)
                if "lora_b" in jax.tree_util.keystr(p)]
    assert b_leaves and all(np.abs(x).max() > 0 for x in b_leaves)  # zero-init, then trained
    full = sum(np.asarray(x).nbytes for x in jax.tree.leaves(before["params"]))
    assert sum(np.asarray(x).nbytes for x in jax.tree.leaves(adapters)) < 0.1 * full
