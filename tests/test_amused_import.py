"""A tiny random aMUSEd folder (AmusedPipeline.save_pretrained) imported and sampled.

The end-to-end check: diffusers' AmusedPipeline and muse_jax's sampler on the imported runs
choose the same tokens when their randomness is switched off the same way: no Gumbel noise
(temperature (0, 0) there, choice_temperature 0 here) and the most likely token instead of a
sampled one (torch.multinomial replaced by argmax there, temperature 0 here).

Both layouts of amused_tiny.py run it: aMUSEd-256's (4x4 tokens) and aMUSEd-512's (8x8 tokens,
down- and up-sampled around the transformer). Every convolution then runs on 4x4, on purpose:
the U-ViT has no position embeddings, so on an all-[MASK] canvas positions that no
convolution has told apart (the interior of a larger grid) get identical logits, and with the
noise off the two loops then break exact confidence ties differently (diffusers masks
`confidence < cut-off`, keeping every tie; muse_jax masks exactly the count by rank). The 2x2
transposed convolution of the up-sampling gives each of a patch's four tokens its own kernel,
so the 8x8 grid adds no ties. With Gumbel noise on, as in real use, ties do not occur.
"""
import json

import numpy as np
import pytest
import torch

from muse_jax import diffusers_import, inference, sampling
from muse_jax.errors import CheckpointError

from amused_tiny import VQ, VQ_FACTOR, amused, amused_layout  # noqa: F401  (fixtures)

PROMPTS = ["the cat and the dog", "a red square.", "", "and the dog and the cat"]


def test_tokens_agree_with_amused_pipeline_without_randomness(amused_layout, monkeypatch):
    pipe, _, run = amused_layout
    side = pipe.transformer.config.sample_size
    monkeypatch.setattr(torch, "multinomial", lambda probs, n, generator=None: probs.argmax(-1, keepdim=True))
    steps = 6
    with torch.no_grad():
        ref = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=10.0, temperature=(0, 0),
                   output_type="latent").images
    ref = ref.reshape(len(PROMPTS), -1).numpy()
    ours_pipe = inference.load(str(run))
    options = sampling.SamplingOptions(**{**sampling.AMUSED.__dict__, "steps": steps,
                                          "temperature": 0.0, "choice_temperature": 0.0})
    ours = inference.sample_tokens(ours_pipe, PROMPTS, options, seed=0)
    print(f"end-to-end: {np.mean(ours == ref):.1%} of {ours.size} tokens agree with AmusedPipeline")
    np.testing.assert_array_equal(ours, ref)
    assert len(np.unique(ref)) > 4  # several different tokens were chosen
    images = ours_pipe.decode(ours)
    with torch.no_grad():
        ref_images = pipe.vqvae.decode(torch.from_numpy(ref).reshape(-1, side, side),
                                       force_not_quantize=True,
                                       shape=(len(ref), side, side, VQ["latent_channels"]))
    ref_images = ref_images.sample.clip(0, 1)
    assert images.shape == (len(PROMPTS), side * VQ_FACTOR, side * VQ_FACTOR, 3)
    diff = np.abs((images + 1) / 2 - ref_images.permute(0, 2, 3, 1).numpy()).max()
    print(f"decoded pixels of those tokens: max abs diff {diff:.3g}")
    assert diff < 1e-4


def test_imported_config_names_the_amused_parts(amused_layout):
    pipe, _, run = amused_layout
    side = pipe.transformer.config.sample_size  # tokens a side, down-sampled inside or not
    pixels = side * VQ_FACTOR  # AmusedPipeline's default height and width
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["kind"] == "uvit" and config["text"]["encoder"] == "clip"
    assert config["text"]["append_pooled"] and config["model"]["grid_size"] == side
    assert config["data"]["image_size"] == pixels
    assert config["model"]["micro_conditioning"] == [pixels, pixels, 0.0, 0.0, 6.0]
    tokenizer = json.loads((run / "tokenizer" / "config.json").read_text())
    assert tokenizer["stage"] == "vqgan" and tokenizer["model"]["kind"] == "diffusers"
    assert tokenizer["data"]["image_size"] == pixels


def test_sharded_fp16_transformer_imports_the_same_weights(amused, tmp_path):
    import shutil

    pipe, src, run = amused
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    shutil.rmtree(copy / "transformer")
    pipe.transformer.to(torch.float16).save_pretrained(copy / "transformer", variant="fp16",
                                                       max_shard_size="20KB")
    pipe.transformer.to(torch.float32)
    files = sorted(p.name for p in (copy / "transformer").iterdir())
    assert "diffusion_pytorch_model.safetensors.index.fp16.json" in files, files
    out = diffusers_import.import_amused(copy, tmp_path / "run")
    from muse_jax import runs
    a = runs.open_run(str(out), "base").state()["params"]
    b = runs.open_run(str(run), "base").state()["params"]
    import jax
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b))
    assert 0 < max(diffs) < 2e-3  # fp16 rounding of the same weights


def test_a_missing_file_is_named_in_one_line(amused, tmp_path):
    import shutil

    _, src, _ = amused
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    (copy / "vqvae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing vqvae/diffusion_pytorch_model.safetensors") as e:
        diffusers_import.import_amused(copy, tmp_path / "run")
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_sample_command_runs_the_imported_run_with_the_amused_preset_by_default(amused_layout,
                                                                                tmp_path):
    from conftest import ONE_FAST_DEVICE, run_module

    pipe, _, run = amused_layout
    pixels = pipe.transformer.config.sample_size * VQ_FACTOR
    out = tmp_path / "grid.png"
    result = run_module("muse_jax.sample", f"--workdir={run}", "--prompt=a cat", "--num_images=2",
                        "--steps=4", f"--out={out}", env=ONE_FAST_DEVICE)  # no --preset
    assert result.returncode == 0, result.stderr[-3000:]
    settings = json.loads(out.with_suffix(".json").read_text())
    # the amused preset (the run's eval.preset), with the one flag given (--steps) applied
    assert (settings["steps"], settings["guidance"], settings["guidance_schedule"],
            settings["choice_temperature"], settings["choice_schedule"]) == (4, 9.0, "constant", 2.0, "amused")
    from PIL import Image
    width, height = Image.open(out).size
    assert (width, height) == (2 * pixels, pixels)  # two images side by side


def test_import_command_names_the_missing_folder_in_one_line(tmp_path):
    from conftest import run_module

    result = run_module("muse_jax.import_diffusers", f"--src={tmp_path / 'nowhere'}",
                        f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: diffusers folder") and "model_index.json" in lines[0]
