"""A tiny random aMUSEd folder (AmusedPipeline.save_pretrained) and its import, for the tests of
the importer (test_amused_import.py), of LoRA on it (test_amused_lora.py) and of fine-tuning it
with the `train` command (test_amused_finetune.py): one builder, so they test the same model.

`UVIT` is aMUSEd-256's layout at toy widths (a 4x4 token grid); `UVIT_512` adds aMUSEd-512's
2x2 down- and up-sampling around the transformer (`downsample`, `upsample`) on an 8x8 token
grid, so that the transformer and every convolution run on 4x4 as in the 256-like model (see
test_amused_import.py on why larger grids tie). The VQ-GAN halves once (f = 2): 8 and 16 px.
"""
from __future__ import annotations

from pathlib import Path

import diffusers
import pytest
import torch
import transformers

from muse_jax import diffusers_import

from test_text_clip import write_tokenizer
from test_uvit import perturbed

MAX_LENGTH = 16
UVIT = dict(hidden_size=32, cond_embed_dim=32, micro_cond_encode_dim=8, micro_cond_embed_dim=40,
            encoder_hidden_size=32, vocab_size=40, codebook_size=32, in_channels=16,
            block_out_channels=24, num_res_blocks=2, block_num_heads=2, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=48, sample_size=4)
UVIT_512 = {**UVIT, "downsample": True, "upsample": True, "sample_size": 8}
LAYOUTS = {"256": UVIT, "512": UVIT_512}  # the fixtures' ids
VQ = dict(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
          up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, latent_channels=6,
          num_vq_embeddings=32, norm_num_groups=4, mid_block_add_attention=False,
          lookup_from_codebook=True, force_upcast=True)
VQ_FACTOR = 2 ** (len(VQ["block_out_channels"]) - 1)


def build(root: Path, uvit: dict = UVIT):
    """(diffusers pipeline, its saved folder root/src, the run imported into root/run)."""
    tokenizer, vocab = write_tokenizer(root / "tok", "!")
    torch.manual_seed(0)
    text = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=MAX_LENGTH, projection_dim=32,
        bos_token_id=vocab - 3, eos_token_id=tokenizer.eos_token_id, pad_token_id=vocab - 1)).eval()
    pipe = diffusers.AmusedPipeline(
        vqvae=perturbed(diffusers.VQModel(**VQ), 1), tokenizer=tokenizer, text_encoder=text,
        transformer=perturbed(diffusers.UVit2DModel(**uvit), 2),
        scheduler=diffusers.AmusedScheduler(mask_token_id=uvit["vocab_size"] - 1))
    pipe.save_pretrained(root / "src")
    run = diffusers_import.import_amused(root / "src", root / "run")
    return pipe, root / "src", run


@pytest.fixture(scope="module")
def amused(tmp_path_factory):
    """`build` of the aMUSEd-256-like layout, once a test module."""
    return build(tmp_path_factory.mktemp("amused"))


@pytest.fixture(scope="module", params=sorted(LAYOUTS), ids=lambda p: f"amused-{p}-like")
def amused_layout(request, tmp_path_factory):
    """`build` of each layout (the 256-like one is `amused`'s, not built twice)."""
    if request.param == "256":
        return request.getfixturevalue("amused")
    return build(tmp_path_factory.mktemp(f"amused{request.param}"), LAYOUTS[request.param])
