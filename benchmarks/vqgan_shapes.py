"""Trains the shapes tokenizer from scratch and prints its speed and reconstruction quality.

    .venv/bin/python benchmarks/vqgan_shapes.py                      # configs/vqgan_shapes.py
    .venv/bin/python benchmarks/vqgan_shapes.py --workdir=/tmp/vq --config=configs/vqgan_shapes.py \
        --config.train.num_steps=300 --config.data.batch_size=32   # the flags of muse_jax.train

Prints training wall time (compilation included), steps/s and images/s, then eval PSNR,
codebook usage and perplexity on the config's 256 held-out images, beside a peer that
needs no training: each image shrunk to the token grid (16x16 for 64 px) with area
averaging and enlarged back bilinearly. That peer keeps 16x16x3 floats an image; the
tokenizer keeps 16x16 integers below the codebook size. Last, how often the shapes oracle
reads a reconstruction as its scene: what a base model on these tokens can at best draw right
(the originals: always).
"""
from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags, logging

from muse_jax import train, training

DEFAULT_CONFIG = "configs/vqgan_shapes.py"
FLAGS = flags.FLAGS


def resize_baseline_psnr(config, grid: int) -> float:
    import numpy as np
    from PIL import Image

    from muse_jax.data import pipeline

    values = []
    for batch in pipeline.eval_batches(config):
        for image in batch["image"]:
            pixels = Image.fromarray(np.round((image + 1) * 127.5).astype(np.uint8))
            small = pixels.resize((grid, grid), Image.BOX)
            back = np.asarray(small.resize(pixels.size, Image.BILINEAR), np.float32) / 127.5 - 1
            mse = np.mean(np.square(back - image))
            values.append(10 * np.log10(4.0 / max(mse, 1e-10)))
    return float(np.mean(values))


def oracle_reads_reconstructions(config, workdir: str) -> float:
    """The share of held-out images whose reconstruction the oracle reads as the caption's
    scene (every object's colour, shape and cell, nothing else)."""
    import jax

    from muse_jax.data import pipeline, shapes
    from muse_jax.images import to_uint8
    from muse_jax.tasks import vqgan

    model, params, _ = vqgan.load_tokenizer(workdir)
    reconstruct = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
    matches = []
    for batch in pipeline.eval_batches(config, keep_caption=True):
        for image, caption in zip(to_uint8(reconstruct(params, batch["image"])), batch["caption"]):
            matches.append(shapes.score(image, str(caption))["match"])
    return float(sum(matches) / len(matches))


def config_flags_name() -> str | None:
    from ml_collections import config_flags
    return config_flags.get_config_filename(FLAGS["config"]) if FLAGS.config else None


def main(argv):
    del argv
    import jax

    from muse_jax import config as config_lib

    logging.set_verbosity(logging.WARNING)
    config = FLAGS.config or config_lib.load_file(DEFAULT_CONFIG)
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="vqgan_shapes_")
    steps = config.train.num_steps
    name = config_flags_name() or DEFAULT_CONFIG
    print(f"training {name} for {steps} steps on {jax.device_count()} "
          f"{jax.devices()[0].platform} device(s), {os.cpu_count()} cores; workdir {workdir}",
          flush=True)
    start = time.perf_counter()
    result = training.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    grid = config.data.image_size // 2 ** (len(config.model.channel_mult) - 1)
    baseline = resize_baseline_psnr(config, grid)
    figures = {
        "train_wall_s": round(wall, 1),
        "steps_per_s": round(steps / wall, 3),
        "images_per_s": round(steps * config.data.batch_size / wall, 1),
        "eval_images": config.data.eval_size,
        "eval_psnr_db": round(result["eval_psnr"], 2),
        "eval_codebook_usage": round(result["eval_codebook_usage"], 3),
        "eval_perplexity": round(result["eval_perplexity"], 1),
        f"peer_resize_{grid}x{grid}_psnr_db": round(baseline, 2),
        "psnr_gain_over_peer_db": round(result["eval_psnr"] - baseline, 2),
        "oracle_reads_reconstructions": round(oracle_reads_reconstructions(config, workdir), 3),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    train.define_flags()  # --config (with --config.x=y overrides) and --workdir, as training
    app.run(main)
