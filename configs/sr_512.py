"""Super-resolution transformer at paper scale: 16x16 base tokens -> 64x64 tokens at 512 px (Muse 2.4).

  python -m muse_jax.train --config=configs/sr_512.py --workdir=gs://bucket/sr_512 \\
      --config.tokenizer.workdir=gs://bucket/vqgan_512 \\
      --config.low_res.tokenizer_workdir=gs://bucket/vqgan_256 --config.text.path=/models/t5-v1_1-xxl
  python -m muse_jax.train --config=configs/sr_512.py --dry_run --num_devices=8   # sizes only

The reference config of the `sr` stage: the base stage's keys (configs/base_256.py, commented
there) with the numbers of the SR model, plus the keys below. Each training image is tokenised
twice: at `data.image_size` by `tokenizer.workdir` (the targets) and, box-downsampled to
`low_res.image_size`, by the base stage's tokenizer (the condition).

Layers as the paper states them: a 16-layer low-res encoder and 32 high-res layers at width
1024. With the base stage's block (self-attention, cross-attention, MLP 4 x width) that is
far more than the paper's 268M: the self- and cross-attention projections of the 32 high-res
layers alone hold 32 x 8 x 1024^2 = 268M, so the paper's blocks must differ from these in a way
it does not state. We keep the stated layer counts and width; README and the dry run give the
count.
"""
from pathlib import Path

import ml_collections

from muse_jax.config import load_file, parse_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_file(Path(__file__).with_name("base_256.py"))
    c.stage = "sr"  # which task muse_jax.train runs: vqgan | base | sr

    c.data.image_size = 512  # the high-res side; must be what tokenizer.workdir was trained at
    c.data.batch_size = 512  # global batch (Muse: 512)
    # The SR stage reads images: data.train_tokens / data.eval_tokens must stay "" (they would
    # need the low-res tokens too); precomputed caption embeddings work as in the base stage.

    c.tokenizer.workdir = ""  # the 512 px VQGAN (configs/vqgan_512.py): targets and decoding

    c.low_res = ml_collections.ConfigDict()
    c.low_res.image_size = 256  # the base stage's resolution; must divide data.image_size
    c.low_res.tokenizer_workdir = ""  # the base stage's VQGAN (configs/vqgan_256.py)

    c.model.grid_size = 64  # high-res tokens per side: 512 px / f=8
    c.model.low_res_grid_size = 16  # low-res tokens per side: low_res.image_size / its factor
    c.model.low_res_codebook_size = 8192  # must equal the low-res tokenizer's
    c.model.low_res_depth = 16  # self-attention blocks encoding the low-res tokens (Muse: 16)
    c.model.width = 1024  # width of both stacks (Muse: 1024)
    c.model.depth = 32  # high-res blocks: multi-axis self-attn, cross-attn, MLP (Muse: 32)
    c.model.num_heads = 16  # half block-local, half grid (dilated) heads in the high-res blocks
    c.model.mlp_dim = 4096  # feed-forward hidden width (4 x width, as in the base model)
    # Multi-axis attention: each high-res token attends to the window x window tokens of its
    # block (half the heads) and of its strided lattice (the other half); 0: dense attention.
    c.model.attention_window = 8  # side of the blocks and lattices (8: 64 keys a query, not 4096)
    # For short runs such as sr_shapes.py; see SuperResTransformer in models/transformer.py.
    c.model.low_res_skip = False  # not in Muse: add the upsampled low-res encoding to the token embeddings

    c.eval.sample_steps = 8  # the SR samples of each evaluation start from real low-res tokens

    c.train.num_steps = 1_000_000  # optimiser steps (Muse trains its SR model as long as the base)

    variant = parse_variant(arg)
    if variant:
        raise ValueError(f"unknown variant {variant!r} of sr_512 (it has none)")
    return c
