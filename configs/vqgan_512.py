"""VQGAN tokenizer at paper scale for the super-resolution stage: 512 px -> 64x64 tokens (f=8).

  python -m muse_jax.train --config=configs/vqgan_512.py --workdir=gs://bucket/vqgan_512

Muse 2.4: the SR model predicts the tokens of a second tokenizer with f=8 at 512 px, codebook
8192, beside the f=16 one at 256 px of the base model. The vqgan_256.py config with one
stride-2 level fewer and a quarter of the batch (4x the pixels an image); every key is
documented there.
"""
from pathlib import Path

from muse_jax.config import load_file


def get_config(arg=None):
    # Variants (finetune: decoder fine-tuning, Muse 2.5) are vqgan_256.py's, applied first.
    c = load_file(Path(__file__).with_name("vqgan_256.py"), arg)
    c.data.image_size = 512
    c.data.batch_size = 64  # 4x the pixels of a 256 px image: the same pixels a step
    c.data.eval_batch_size = 16
    c.data.eval_size = 1024
    c.model.channel_mult = (1, 1, 2, 4)  # three stride-2 stages: f=8, 64x64 tokens
    c.model.codebook_size = 8192  # Muse: 8192 for both tokenizers
    return c
