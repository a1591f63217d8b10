"""LoRA on the imported aMUSEd U-ViT: fine-tuning it (lora.UVIT_TARGETS), and diffusers' aMUSEd
LoRA files (PEFT, `AmusedLoraLoaderMixin.save_lora_weights`) imported as LoRA runs
(muse_jax/diffusers_lora.py), against diffusers' own model with the adapter active.

The diffusers side is the tiny random aMUSEd of amused_tiny.py, its transformer given
a PEFT adapter the way examples/amused/train_amused.py adds one (`add_adapter(LoraConfig)`),
with lora_B random (PEFT starts it at zero, which would hide a wrong mapping) and one module
group at another rank (PEFT's rank_pattern), saved as train_amused.py saves it.
"""
import copy
import json

import flax
import jax
import numpy as np
import pytest
import torch
from diffusers.loaders import AmusedLoraLoaderMixin
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.numpy import save_file

from conftest import one_device_mesh
from muse_jax import diffusers_lora, parallel, runs, tasks
from muse_jax.errors import CheckpointError, UserError
from muse_jax.models import uvit
from muse_jax.tasks import base as base_task
from muse_jax.tasks import finetune

from amused_tiny import UVIT, amused  # noqa: F401  (fixture: the tiny random aMUSEd, imported)
from test_uvit import inputs, reference, run as uvit_logits

RANK, ALPHA = 4, 8.0  # PEFT scale alpha / r = 2 where the file is read as trained


@pytest.fixture(scope="module")
def lora_file(amused, tmp_path_factory):
    """(the diffusers transformer with its adapter active, the folder save_lora_weights wrote)."""
    pipe, _, _ = amused
    transformer = copy.deepcopy(pipe.transformer)
    transformer.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, rank_pattern={"attn2.to_v": 2},
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    folder = tmp_path_factory.mktemp("lora")
    AmusedLoraLoaderMixin.save_lora_weights(
        folder, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return transformer.eval(), folder


def _logits(workdir, args, lora_scale=1.0):
    """The U-ViT logits of the weights `sample` runs `workdir` with (tasks/finetune.py)."""
    run = runs.open_run(str(workdir), "base")
    params = finetune.sampling_weights(run, lora_scale)
    return uvit_logits(base_task.build_model(run.config), params, *args)


def test_lora_file_logits_match_diffusers_with_the_adapter_active_and_the_base_at_scale_0(
        amused, lora_file, tmp_path):
    pipe, _, base = amused
    transformer, folder = lora_file
    out = diffusers_lora.import_lora(folder, base, tmp_path / "lora", alpha=ALPHA)
    spec = json.loads((out / "config.json").read_text())["finetune"]
    assert (spec["lora"]["rank"], spec["lora"]["alpha"]) == (RANK, ALPHA)
    assert spec["lora"]["targets"] == ["query", "key", "value", "out"]
    args = inputs(UVIT, batch=2)
    ref = reference(transformer, *args, UVIT["sample_size"])
    base_ref = reference(pipe.transformer, *args, UVIT["sample_size"])
    ours = _logits(out, args)
    diff, effect = np.abs(ours - ref).max(), np.abs(ref - base_ref).max()
    off = np.abs(_logits(out, args, lora_scale=0.0) - base_ref).max()
    print(f"LoRA file: logits max abs diff {diff:.3g} with the adapter (which moves them by "
          f"{effect:.3g}), {off:.3g} at --lora_scale=0 against the base")
    assert diff < 1e-4 and off < 1e-4
    assert effect > 0.5  # the adapter matters: a wrong mapping or scale could not pass


def test_default_alpha_is_what_diffusers_assumes_loading_the_file(amused, lora_file, tmp_path):
    """No alpha in the file: diffusers' `load_lora_into_transformer` takes alpha = r (scale 1)."""
    pipe, _, base = amused
    _, folder = lora_file
    out = diffusers_lora.import_lora(folder, base, tmp_path / "lora")
    spec = json.loads((out / "config.json").read_text())["finetune"]["lora"]
    assert (spec["rank"], spec["alpha"]) == (RANK, float(RANK))
    loaded = copy.deepcopy(pipe.transformer)
    state, alphas = AmusedLoraLoaderMixin.lora_state_dict(folder)
    AmusedLoraLoaderMixin.load_lora_into_transformer(state, network_alphas=alphas,
                                                     transformer=loaded)
    args = inputs(UVIT, batch=2, seed=1)
    ref = reference(loaded.eval(), *args, UVIT["sample_size"])
    diff = np.abs(_logits(out, args) - ref).max()
    print(f"LoRA file, default alpha: max abs diff {diff:.3g} to diffusers' loading of it")
    assert diff < 1e-4
    assert np.abs(ref - reference(pipe.transformer, *args, UVIT["sample_size"])).max() > 0.2


def test_unsupported_or_mismatched_lora_tensors_are_named_in_one_line(amused, tmp_path):
    _, _, base = amused
    a, b = np.zeros((2, 32), np.float32), np.zeros((32, 2), np.float32)
    q = "transformer.transformer_layers.0.attn1.to_q"
    pair = {f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": b}
    dora = {"lora_adapter_metadata": json.dumps({"transformer.use_dora": True})}
    cases = {
        "text": ({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": a},
                 None, UserError, r"text-encoder LoRA \(1 tensors.*not supported"),
        "module": ({**pair, "transformer.cond_embed.linear_1.lora_A.weight": a}, None,
                   CheckpointError, r"1 tensor\(s\) that no U-ViT LoRA target takes.*cond_embed"),
        "unpaired": ({f"{q}.lora_A.weight": a}, None, CheckpointError, r"without their A/B partner"),
        "shape": ({f"{q}.lora_A.weight": np.zeros((2, 31), np.float32), f"{q}.lora_B.weight": b},
                  None, CheckpointError, r"lora_A \(2, 31\).*takes \[r, 32\]"),
        "dora": (pair, dora, CheckpointError, r"use_dora=True, which the import does not support"),
    }
    for name, (tensors, metadata, error, message) in cases.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"), metadata=metadata)
        with pytest.raises(error, match=message) as e:
            diffusers_lora.import_lora(tmp_path / f"{name}.safetensors", base, tmp_path / name)
        assert "\n" not in str(e.value)
        assert not (tmp_path / name).exists()  # nothing written


def test_alpha_comes_from_the_files_peft_metadata_unless_given(amused, tmp_path):
    _, _, base = amused
    q = "transformer.transformer_layers.0.attn1.to_q"
    b = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    save_file({f"{q}.lora_A.weight": np.ones((2, 32), np.float32), f"{q}.lora_B.weight": b},
              str(tmp_path / "f.safetensors"), metadata={"lora_adapter_metadata": json.dumps(
                  {"transformer.r": 2, "transformer.lora_alpha": 6.0})})
    for alpha, expected in ((None, 6.0), (1.0, 1.0)):
        out = diffusers_lora.import_lora(tmp_path / "f.safetensors", base, tmp_path / str(alpha),
                                         alpha=alpha)
        spec = json.loads((out / "config.json").read_text())["finetune"]["lora"]
        assert (spec["rank"], spec["alpha"], spec["targets"]) == (2, expected, ["query"])
    adapters = runs.open_run(str(out), "base").state()["ema_params"]["layers_0"]["attn1"]["query"]
    np.testing.assert_array_equal(adapters["lora_b"], b.T.reshape(2, 4, 8))  # [r, heads, kv]


@pytest.mark.slow  # compiles a U-ViT + CLIP train step: ~35 s of CPU
def test_lora_fine_tune_of_the_imported_uvit_changes_only_the_adapters(amused):
    """Targets by model.kind (lora.MODEL_TARGETS): U-ViT adapters start as the base exactly,
    and three steps train them and nothing else."""
    _, _, base = amused
    config = runs.open_run(str(base), "base").config
    with config.unlocked():
        config.finetune.init_from = str(base)
        config.finetune.lora.rank, config.finetune.lora.alpha = 2, 2.0
        config.optim.lr, config.optim.warmup_steps = 1e-2, 0
    before = runs.open_run(str(base), "base").state()["ema_params"]
    mesh = one_device_mesh()
    task = tasks.create(config)
    task.check_config()
    steps = task.load(mesh)
    state = steps.start_state(parallel.create_sharded(task.init_state, mesh, jax.random.key(0))[0])
    paths = flax.traverse_util.flatten_dict(state.params)
    # 2 layers x 2 attentions + 2 blocks x 2 pairs x 2 attentions, each q/k/v/out: A and B.
    assert len(paths) == (2 * 2 + 2 * 2 * 2) * 4 * 2
    assert all(p[-1] in ("lora_a", "lora_b") and p[-3] in ("attn1", "attn2") for p in paths)
    weights = task.training.weights.weights(state.ema_params, steps.frozen)
    apply = jax.jit(task.model.apply)
    tokens = np.random.default_rng(0).integers(0, 32, (2, 16)).astype(np.int32)
    text = np.random.default_rng(1).normal(size=(2, 17, 32)).astype(np.float32)
    np.testing.assert_array_equal(apply({"params": weights}, tokens, text),
                                  apply({"params": before}, tokens, text))  # step 0: the base
    rng = np.random.default_rng(2)
    # Token ids in place of images: the VQ encoder is not what is under test (nor compiled).
    batch = steps.prepare_batch({"tokens": rng.integers(0, 32, (4, 4, 4)).astype(np.int32),
                                 "caption": ["the cat", "a red dog", "", "the dog and the cat"]})
    step = jax.jit(steps.train_step)
    for i in range(3):
        state, metrics = step(state, batch, jax.random.key(i), steps.frozen)
        assert np.isfinite(float(metrics["loss"]))
    for x, y in zip(jax.tree.leaves(steps.frozen["pretrained"]), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # frozen: bit-identical
    trained = [np.abs(np.asarray(x)).max() for p, x in
               flax.traverse_util.flatten_dict(state.params).items() if p[-1] == "lora_b"]
    assert min(trained) > 1e-3  # every adapter moved off zero


def test_uvit_diffusers_names_cover_every_parameter_once(amused):
    _, src, _ = amused
    net = uvit.UVitConfig.from_diffusers(UVIT)
    names = uvit.diffusers_names(net)
    from safetensors import safe_open
    with safe_open(str(src / "transformer" / "diffusion_pytorch_model.safetensors"), "np") as f:
        assert sorted(names.values()) == sorted(f.keys())
    assert names[("layers_1", "attn2", "out", "kernel")] == \
        "transformer_layers.1.attn2.to_out.0.weight"


def test_import_command_needs_base_with_lora_in_one_line(tmp_path):
    from conftest import run_module

    result = run_module("muse_jax.import_diffusers", f"--lora={tmp_path}",
                        f"--workdir={tmp_path / 'r'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--base=RUN" in lines[0], lines


@pytest.mark.slow
def test_imported_lora_run_samples_with_the_sample_command_and_merges(amused, lora_file, tmp_path):
    from conftest import ONE_FAST_DEVICE, run_module

    _, _, base = amused
    _, folder = lora_file
    lora_run = tmp_path / "lora"
    result = run_module("muse_jax.import_diffusers", f"--lora={folder}", f"--base={base}",
                        f"--lora_alpha={ALPHA}", f"--workdir={lora_run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert runs.open_run(str(lora_run), "base").config.eval.preset == "amused"  # the base run's
    out = tmp_path / "grid.png"
    result = run_module("muse_jax.sample", f"--workdir={lora_run}", "--prompt=a cat",
                        "--num_images=1", "--steps=2", "--lora_scale=0.5",
                        f"--out={out}", env=ONE_FAST_DEVICE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.is_file()
    merged = finetune.export_merged(str(lora_run), str(tmp_path / "merged"), lora_scale=0.5)
    expected = finetune.sampling_weights(runs.open_run(str(lora_run), "base"), 0.5)
    got = runs.open_run(merged, "base").state()["ema_params"]
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not finetune.uses_lora(runs.open_run(merged, "base").config)
