"""VQGAN tokenizer for the shapes set at twice the resolution: 128 px -> 32x32 tokens (f=4).

The super-resolution stage's tokenizer on a CPU, the counterpart of vqgan_512.py. The paper
doubles pixels and quadruples tokens per side (256 px f=16 -> 512 px f=8); here pixels and
tokens both double (64 px f=4 -> 128 px f=4), so the SR model still has to invent detail
(32x32 tokens from 16x16) but the tokenizer stays a small f=4 network that trains on 2 cores.

The shapes VQGAN is fully convolutional, and applied at 128 px unchanged it already
reconstructs held-out images at 30.3 dB (30.9 at 64 px), so this config fine-tunes it
(`finetune.init_from`, whole network) instead of training from scratch: a few minutes rather
than the better part of an hour. Needs workdirs/vqgan_shapes (`make demo`):

  python -m muse_jax.train --config=configs/vqgan_shapes_hr.py --workdir=workdirs/vqgan_shapes_hr
"""
from pathlib import Path

from muse_jax.config import load_file, parse_variant


def get_config(arg=None):
    c = load_file(Path(__file__).with_name("vqgan_shapes.py"))
    c.data.image_size = 128  # ShapesSource renders the same scene at any size
    c.data.batch_size = 8  # same pixels a step as vqgan_shapes' 16 images of 64 px
    c.data.eval_batch_size = 32
    c.data.eval_size = 128

    c.finetune.init_from = "workdirs/vqgan_shapes"  # same architecture and codebook size
    c.finetune.decoder_only = False  # encoder and codebook adapt to the larger objects too

    c.optim.lr = 3e-4  # fine-tuning: a third of the from-scratch rate
    c.optim.warmup_steps = 20
    c.train.num_steps = 150  # starts at 30.3 dB; on 2 busy cores a step took ~7 s
    c.train.log_every = 25
    c.train.eval_every = 150
    c.train.checkpoint_every = 150

    variant = parse_variant(arg)
    if variant:  # tests reuse vqgan_shapes:tiny at twice its size: the network is convolutional
        raise ValueError(f"unknown variant {variant!r} of vqgan_shapes_hr (it has none)")
    return c
