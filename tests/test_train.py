"""The training entry point end to end: outputs, dry run, fine-tuning (faults: test_faults.py)."""
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from conftest import (ONE_FAST_DEVICE, one_device, one_device_mesh, run_module,
                      tensorboard_events)
from muse_jax import checkpoint, metrics, runs, tasks, training
from muse_jax import config as config_lib
from muse_jax.config import ConfigError


def _steps_saved(workdir):
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


@pytest.mark.slow
def test_tiny_run_writes_everything(tmp_path):
    workdir = tmp_path / "run"
    run_module("muse_jax.train", "--config=configs/vqgan_shapes.py:tiny", f"--workdir={workdir}",
               env=ONE_FAST_DEVICE, check=True)
    assert _steps_saved(workdir) == [2, 4, 6]
    logged = metrics.read_jsonl(str(workdir / "metrics.jsonl"))
    assert set(range(1, 7)) <= set(logged)
    assert all(np.isfinite(logged[s]["loss"]) for s in range(1, 7))
    result = json.loads((workdir / "eval.json").read_text())
    assert result["step"] == 6 and {"eval_psnr", "eval_codebook_usage", "eval_perplexity"} <= set(result)
    # Inputs over reconstructions, 8 columns of 64 px.
    assert Image.open(workdir / "reconstructions.png").size == (8 * 64, 2 * 64)
    # TensorBoard reads the same losses and the reconstructions grid.
    events = tensorboard_events(workdir)
    assert {e.step: e.value for e in events.Scalars("loss")} == pytest.approx(
        {s: logged[s]["loss"] for s in range(1, 7)})
    assert [e.step for e in events.Images("reconstructions")] == [6]
    assert json.loads((workdir / "config.json").read_text())["stage"] == "vqgan"


@pytest.mark.slow
def test_dry_run_of_paper_scale_tokenizer():
    result = run_module("muse_jax.train", "--config=configs/vqgan_256.py", "--dry_run",
                        "--dry_run_json", "--num_devices=8", "--config.mesh.fsdp=4",
                        "--config.mesh.tensor=2",
                        env=ONE_FAST_DEVICE, check=True)
    report = json.loads(result.stdout)
    assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    total = report["params"]["total"]
    assert 30e6 < total < 80e6, total
    assert report["params"]["quantizer"] == 8192 * 32
    # Sharded over 8 devices the largest shard is far below the full f32 parameter bytes.
    assert report["per_device_bytes"]["params"] < 0.3 * 4 * total


def test_prepare_workdir_rejects_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(training.UserError, match="not writable"):
        training.prepare_workdir(str(target / "run"))


@pytest.mark.slow
def test_decoder_finetuning_freezes_encoder_and_starts_identical(tmp_path):
    # A tokenizer run at its initialisation, with a block a level: the tiny config's decoder
    # has none, and cannot take extra ones. (Training it first cost this test ~25 s.)
    config = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    config.model.num_res_blocks = 1
    source = tmp_path / "source"
    source.mkdir()
    runs.save_config(str(source), config)
    initial = jax.jit(tasks.create(config).init_state)(jax.random.key(0))
    checkpoint.save_state(str(source / "checkpoints"), 0, nn.unbox(initial))
    saved = checkpoint.load_state(str(source / "checkpoints"))

    ft = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    ft.finetune.init_from = str(source)
    ft.finetune.decoder_only = True
    ft.finetune.extra_decoder_blocks = 1
    ft.train.num_steps = 3
    with pytest.raises(ConfigError, match="extra_decoder_blocks needs model.num_res_blocks >= 1"):
        tasks.create(ft).check_config()
    ft.model.num_res_blocks = 1
    task = tasks.create(ft)
    mesh = one_device_mesh()
    start = task.load(mesh).start_state(nn.unbox(task.init_state(jax.random.key(1))))
    assert any("extra_" in k for k in start.params["decoder"])
    images = np.random.default_rng(0).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
    before = tasks.create(config).reconstruct(saved["params"], images)
    np.testing.assert_allclose(task.reconstruct(start.params, images), before, atol=1e-5)

    training.train_and_evaluate(ft, str(tmp_path / "finetuned"), devices=one_device())
    tuned = checkpoint.load_state(str(tmp_path / "finetuned" / "checkpoints"))["params"]
    for part in ("encoder", "quantizer"):
        for a, b in zip(jax.tree.leaves(tuned[part]), jax.tree.leaves(saved["params"][part])):
            np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(tuned["decoder"]), jax.tree.leaves(start.params["decoder"]))]
    assert any(changed)
