"""Fine-tuning a base run on a few captioned images (tasks/finetune.py): LoRA and full.

The fine-tunes start from the session's tiny base run (conftest.tiny_base, 2 steps) on 24 shapes
images in a folder (one of them a corrupt file, skipped as in any run).
"""
import os
import signal
from pathlib import Path

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from conftest import one_device, one_device_mesh
from muse_jax import checkpoint, inference, parallel, plan, sampling, tasks, training
from muse_jax import config as config_lib
from muse_jax.config import ConfigError
from muse_jax.data.shapes import ShapesSource
from muse_jax.tasks import finetune

pytestmark = pytest.mark.slow  # each test trains or restores tiny runs: tens of seconds


def _tree_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def base_run(tiny_base):
    return tiny_base  # conftest.py


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("few_images")
    source = ShapesSource(image_size=64, split="train", seed=5, size=24)
    for i in range(24):
        example = source[i]
        Image.fromarray(example["image"]).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(example["caption"] + "\n")
    (folder / "03.png").write_bytes(b"not a png")  # a bad file: skipped and counted
    return folder


def _config(variant, base_run, tokenizer_dir, images, **overrides):
    c = config_lib.load_file(config_lib.CONFIG_DIR / "finetune_shapes.py", variant)
    c.finetune.init_from = str(base_run)
    c.tokenizer.workdir = str(tokenizer_dir)
    c.data.path = str(images)
    for key, value in overrides.items():
        node = c
        *blocks, name = key.split(".")
        for block in blocks:
            node = node[block]
        node[name] = value
    return c


@pytest.fixture(scope="module")
def lora_run(base_run, tokenizer_dir, images, tmp_path_factory):
    before = checkpoint.load_state(str(base_run / "checkpoints"))
    workdir = tmp_path_factory.mktemp("lora") / "run"
    config = _config("tiny", base_run, tokenizer_dir, images)
    training.train_and_evaluate(config, str(workdir), devices=one_device())
    return workdir, config, before


@pytest.fixture(scope="module")
def full_run(base_run, tokenizer_dir, images, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full") / "run"
    config = _config("tiny_full", base_run, tokenizer_dir, images)
    training.train_and_evaluate(config, str(workdir), devices=one_device())
    return workdir, config


def test_lora_step_zero_is_the_pretrained_model_and_training_leaves_it_untouched(lora_run,
                                                                                 base_run):
    _, config, before = lora_run
    mesh = one_device_mesh()
    task = tasks.create(config)
    steps = task.load(mesh)
    state = steps.start_state(parallel.create_sharded(task.init_state, mesh, jax.random.key(0))[0])
    pretrained = steps.frozen["pretrained"]
    _tree_equal(pretrained, before["ema_params"])
    # Step 0: the weights the model runs with are the pretrained ones, bit for bit.
    _tree_equal(task.training.weights.weights(state.ema_params, steps.frozen), pretrained)
    _tree_equal(task.training.weights.train_weights(state.params, steps.frozen,
                                                    jax.random.key(1)), pretrained)
    # No pretrained weight is in the state (so none in the optimiser state or a checkpoint).
    paths = flax.traverse_util.flatten_dict(state.params)
    assert paths and all(p[-1] in ("lora_a", "lora_b") for p in paths)
    rng = np.random.default_rng(0)
    n, length = config.data.batch_size, config.text.max_length
    batch = {"image": rng.uniform(-1, 1, (n, 64, 64, 3)).astype(np.float32),
             "text_ids": rng.integers(0, 1000, (n, length)).astype(np.int32),
             "text_mask": np.ones((n, length), bool)}
    step = jax.jit(steps.train_step)
    for i in range(3):
        state, metrics = step(state, batch, jax.random.key(i), steps.frozen)
        assert np.isfinite(float(metrics["loss"]))
    _tree_equal(steps.frozen["pretrained"], before["ema_params"])  # frozen: bit-identical
    b = [x for p, x in flax.traverse_util.flatten_dict(state.params).items() if p[-1] == "lora_b"]
    assert max(float(np.abs(x).max()) for x in b) > 0  # the adapters did train
    # The base run on disk is unchanged by the whole fine-tune.
    _tree_equal(checkpoint.load_state(str(base_run / "checkpoints")), before)


def test_lora_run_samples_blends_and_merges(lora_run, base_run, tmp_path):
    workdir, config, before = lora_run
    base = inference.load(str(base_run))
    tuned = inference.load(str(workdir), text_encoder=base.text_encoder)
    off = inference.load(str(workdir), lora_scale=0.0, text_encoder=base.text_encoder)
    _tree_equal(off.params, before["ema_params"])  # --lora_scale=0: the pretrained model
    assert _max_diff(tuned.params, base.params) > 1e-4
    out = finetune.export_merged(str(workdir), str(tmp_path / "merged"))
    merged = inference.load(out, text_encoder=base.text_encoder)
    assert not finetune.uses_lora(merged.config) and not merged.config.finetune.init_from
    # Unmerged: the adapters' factored path beside the frozen kernels, for every projection.
    adapters = checkpoint.load_state(str(workdir / "checkpoints"))["ema_params"]
    flat = flax.traverse_util.flatten_dict(adapters)
    s = finetune.create(config).multiplier
    emb, mask = base.encode_text(["a red circle at the center"])
    tokens = np.full((1, 256), base.mask_id, np.int32)
    tokens[0, ::3] = 5

    def unmerged_logits():
        def intercept(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = context.module.path
            key = (*path, "lora_a")
            if context.method_name == "__call__" and key in flat:
                x = args[0]
                a, b = flat[key], flat[(*path, "lora_b")]
                spec = "bld,dr,rhk->blhk" if a.ndim == 2 and b.ndim == 3 else \
                    "blhk,hkr,rd->bld" if a.ndim == 3 else "bld,dr,re->ble"
                out = out + s * np.einsum(spec, x, a, b)
            return out
        with nn.intercept_methods(intercept):
            return base.model.apply({"params": base.params}, tokens, emb, mask)

    merged_logits = merged.model.apply({"params": merged.params}, tokens, emb, mask)
    np.testing.assert_allclose(merged_logits, unmerged_logits(), atol=1e-5)
    # Sampling the fine-tune and its merged export gives the same tokens.
    options = sampling.SamplingOptions(steps=2)
    np.testing.assert_array_equal(inference.sample_tokens(tuned, ["a blue square"], options, 0),
                                  inference.sample_tokens(merged, ["a blue square"], options, 0))
    with pytest.raises(ConfigError, match="not a LoRA fine-tune"):
        finetune.export_merged(str(base_run), str(tmp_path / "again"))
    with pytest.raises(ConfigError, match="not a LoRA fine-tune"):
        inference.load(str(base_run), lora_scale=0.5, text_encoder=base.text_encoder)


def test_full_finetune_starts_from_the_base_weights(full_run, base_run, tokenizer_dir, images):
    workdir, config = full_run
    before = checkpoint.load_state(str(base_run / "checkpoints"))
    mesh = one_device_mesh()
    task = tasks.create(config)
    steps = task.load(mesh)
    assert "pretrained" not in steps.frozen  # the weights are the state's own
    start = steps.start_state(parallel.create_sharded(task.init_state, mesh, jax.random.key(0))[0])
    _tree_equal(start.params, before["ema_params"])
    _tree_equal(start.ema_params, before["ema_params"])
    after = checkpoint.load_state(str(workdir / "checkpoints"))
    assert int(after["step"]) == config.train.num_steps
    assert _max_diff(after["params"], before["ema_params"]) > 0


def test_adapter_checkpoint_is_a_small_fraction_of_a_full_one(lora_run, full_run):
    lora_dir, full_dir = lora_run[0] / "checkpoints" / "6", full_run[0] / "checkpoints" / "6"
    lora_state, full_state = (checkpoint.load_state(str(d.parent)) for d in (lora_dir, full_dir))
    nbytes = lambda t: sum(np.asarray(x).nbytes for x in jax.tree.leaves(t))  # noqa: E731
    # Rank 2 on q/k/v/out of the tiny model: ~3% of its weights (adapters, Adam moments, EMA).
    assert nbytes(lora_state) < 0.05 * nbytes(full_state)
    # On disk, orbax's per-checkpoint metadata and the data iterator weigh in too.
    assert _dir_bytes(lora_dir) < 0.5 * _dir_bytes(full_dir)


def test_lora_settings_are_checked(base_run, tokenizer_dir, images):
    bad = _config("tiny", base_run, tokenizer_dir, images, **{"finetune.lora.targets": ("to_q",)})
    with pytest.raises(ConfigError, match="finetune.lora.targets"):
        tasks.create(bad).check_config()
    missing = _config("tiny", base_run, tokenizer_dir, images, **{"finetune.init_from": ""})
    with pytest.raises(ConfigError, match="finetune.init_from '' has no config.json"):
        tasks.create(missing).load(one_device_mesh())
    wider = _config("tiny", base_run, tokenizer_dir, images, **{"model.mlp_dim": 128})
    with pytest.raises(ConfigError,
                       match=r"mlp_in/bias has shape \(64,\), the config expects \(128,\)"):
        tasks.create(wider).load(one_device_mesh())


def test_dry_run_sizes_lora_against_full_finetuning_at_base_256():
    reports = {}
    for variant in (None, "full"):
        c = config_lib.load_file(config_lib.CONFIG_DIR / "finetune_256.py", variant)
        c.mesh.data, c.mesh.fsdp = 1, 8
        reports[variant or "lora"] = plan.plan(c, jax.devices(), memory_gib=16)
    lora_r, full_r = reports["lora"], reports["full"]
    total = full_r["params"]["total"]
    assert lora_r["pretrained_params"] == total and 0.6e9 < total < 0.7e9
    # Rank 16 on q/k/v/out of 24 blocks' self- and cross-attention: 24 x 8 x 16 x 2 x 1280.
    assert lora_r["params"]["total"] == 24 * 8 * 16 * 2 * 1280
    lp, fp = lora_r["per_device_bytes"], full_r["per_device_bytes"]
    assert lp["pretrained"] == fp["params"]  # the same weights, frozen instead of trained
    # Adapters, Adam moments and EMA: 4 x 4 bytes an adapter weight, between split 8 ways and
    # whole (B of q/k/v is [rank, heads, kv]: no fsdp axis to split); 5 % of the full state.
    adapter_bytes = 16 * lora_r["params"]["total"]
    assert adapter_bytes / 8 < lp["whole_state"] < adapter_bytes
    assert lp["whole_state"] < 0.1 * fp["whole_state"]
    assert lora_r["activations"] == full_r["activations"]
    # LoRA saves the full fine-tune's Adam moments (2x the weights), its gradients and its EMA,
    # holding the weights once (frozen) instead of twice; the frozen T5-XXL stays in both.
    assert full_r["total"] - lora_r["total"] > 0.9 * 3 * fp["params"]
    assert "frozen pretrained weights" in plan.format_table(lora_r, "lora")


def test_lora_resume_after_a_kill_gives_the_uninterrupted_adapters(base_run, tokenizer_dir,
                                                                   images, tmp_path):
    from test_faults import Server, resumed_from

    args = ["--config=configs/finetune_shapes.py:tiny", f"--config.finetune.init_from={base_run}",
            f"--config.tokenizer.workdir={tokenizer_dir}", f"--config.data.path={images}",
            "--config.eval.num_samples=0"]
    server = Server(tmp_path / "xla_cache")
    try:
        straight = tmp_path / "straight"
        assert server.start(straight, args=[*args, f"--workdir={straight}"]).finish() == 0
        killed = tmp_path / "killed"
        run = server.start(killed, args=[*args, f"--workdir={killed}"], pause_at=5)
        run.wait_paused()
        os.kill(run.pid, signal.SIGKILL)
        assert run.finish() == -signal.SIGKILL
        again = server.start(killed, args=[*args, f"--workdir={killed}"])
        assert again.finish() == 0, again.output()[-3000:]
        # Step 4's checkpoint is written asynchronously: on a loaded machine the kill at step 5
        # can land before it commits, and the run resumes from step 2's. Never from scratch.
        assert resumed_from(again.output()) in (2, 4)
    finally:
        server.close()
    a, b = (checkpoint.load_state(str(d / "checkpoints")) for d in (straight, killed))
    assert int(a["step"]) == int(b["step"]) == 6
    _tree_equal(a["params"], b["params"])
    _tree_equal(a["ema_params"], b["ema_params"])
