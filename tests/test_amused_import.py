"""A tiny random aMUSEd folder (AmusedPipeline.save_pretrained) imported and sampled.

The end-to-end check: diffusers' AmusedPipeline and muse_jax's sampler on the imported runs
choose the same tokens when their randomness is switched off the same way: no Gumbel noise
(temperature (0, 0) there, choice_temperature 0 here) and the most likely token instead of a
sampled one (torch.multinomial replaced by argmax there, temperature 0 here).

The token grid is 4x4 on purpose: the U-ViT has no position embeddings, so on an all-[MASK]
canvas positions that no convolution has told apart (the interior of a larger grid) get
identical logits, and with the noise off the two loops then break exact confidence ties
differently (diffusers masks `confidence < cut-off`, keeping every tie; muse_jax masks
exactly the count by rank). With Gumbel noise on, as in real use, ties do not occur.
"""
import json

import numpy as np
import pytest
import torch
import transformers
import diffusers

from muse_jax import diffusers_import, inference, sampling
from muse_jax.errors import CheckpointError

from test_text_clip import write_tokenizer
from test_uvit import perturbed

MAX_LENGTH = 16
UVIT = dict(hidden_size=32, cond_embed_dim=32, micro_cond_encode_dim=8, micro_cond_embed_dim=40,
            encoder_hidden_size=32, vocab_size=40, codebook_size=32, in_channels=16,
            block_out_channels=24, num_res_blocks=2, block_num_heads=2, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=48, sample_size=4)
VQ = dict(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
          up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, latent_channels=6,
          num_vq_embeddings=32, norm_num_groups=4, mid_block_add_attention=False,
          lookup_from_codebook=True, force_upcast=True)
PROMPTS = ["the cat and the dog", "a red square.", "", "and the dog and the cat"]


@pytest.fixture(scope="module")
def amused(tmp_path_factory):
    """(diffusers pipeline, its saved folder, the imported run) of a tiny random aMUSEd."""
    root = tmp_path_factory.mktemp("amused")
    tokenizer, vocab = write_tokenizer(root / "tok", "!")
    torch.manual_seed(0)
    text = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=MAX_LENGTH, projection_dim=32,
        bos_token_id=vocab - 3, eos_token_id=tokenizer.eos_token_id, pad_token_id=vocab - 1)).eval()
    pipe = diffusers.AmusedPipeline(
        vqvae=perturbed(diffusers.VQModel(**VQ), 1), tokenizer=tokenizer, text_encoder=text,
        transformer=perturbed(diffusers.UVit2DModel(**UVIT), 2),
        scheduler=diffusers.AmusedScheduler(mask_token_id=UVIT["vocab_size"] - 1))
    pipe.save_pretrained(root / "src")
    run = diffusers_import.import_amused(root / "src", root / "run")
    return pipe, root / "src", run


def test_tokens_agree_with_amused_pipeline_without_randomness(amused, monkeypatch):
    pipe, _, run = amused
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
        ref_images = pipe.vqvae.decode(torch.from_numpy(ref).reshape(4, 4, 4), force_not_quantize=True,
                                       shape=(4, 4, 4, VQ["latent_channels"])).sample.clip(0, 1)
    diff = np.abs((images + 1) / 2 - ref_images.permute(0, 2, 3, 1).numpy()).max()
    print(f"decoded pixels of those tokens: max abs diff {diff:.3g}")
    assert diff < 1e-4


def test_imported_config_names_the_amused_parts(amused):
    _, src, run = amused
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["kind"] == "uvit" and config["text"]["encoder"] == "clip"
    assert config["text"]["append_pooled"] and config["model"]["grid_size"] == 4
    assert config["model"]["micro_conditioning"] == [8.0, 8.0, 0.0, 0.0, 6.0]
    tokenizer = json.loads((run / "tokenizer" / "config.json").read_text())
    assert tokenizer["stage"] == "vqgan" and tokenizer["model"]["kind"] == "diffusers"


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
def test_sample_command_runs_the_imported_run_with_the_amused_preset(amused, tmp_path):
    from conftest import run_module

    _, _, run = amused
    out = tmp_path / "grid.png"
    result = run_module("muse_jax.sample", f"--workdir={run}", "--prompt=a cat", "--num_images=2",
                        "--preset=amused", "--steps=4", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    settings = json.loads(out.with_suffix(".json").read_text())
    # the preset's values, with the one flag given (--steps) applied over them
    assert (settings["steps"], settings["guidance"], settings["guidance_schedule"],
            settings["choice_temperature"], settings["choice_schedule"]) == (4, 9.0, "constant", 2.0, "amused")
    from PIL import Image
    width, height = Image.open(out).size
    assert width >= 2 * 8 and height >= 8  # two 8 px images


def test_import_command_names_the_missing_folder_in_one_line(tmp_path):
    from conftest import run_module

    result = run_module("muse_jax.import_diffusers", f"--src={tmp_path / 'nowhere'}",
                        f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: diffusers folder") and "model_index.json" in lines[0]
