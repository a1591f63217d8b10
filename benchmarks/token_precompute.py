"""Images a second the demo's tokenizer encodes at each batch size (`make demo` first).

    .venv/bin/python benchmarks/token_precompute.py --tokenizer=workdirs/demo/vqgan_shapes_shipped

`make demo` encodes its 10,000 training images once (`muse_jax/data/tokens.py`); the batch it
hands the compiled encoder decides whether the activations stay in the CPU's cache. Random
images of the tokenizer's size, each batch size timed after its compile, over --images.
(2-core AMD EPYC, 2026-12-05, two runs: batch 256 375 / 354 images/s, 64 400 / 376, 32 449 /
427, 16 413 / 431, 8 385 / 453: the small batches win, 32 by 1.2x.)
"""
from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("tokenizer", "workdirs/demo/vqgan_shapes_shipped", "A trained tokenizer's workdir.")
flags.DEFINE_list("batch_sizes", ["256", "64", "32", "16", "8"], "Batch sizes to time.")
flags.DEFINE_integer("images", 2048, "Images encoded at each batch size.")


def main(argv):
    del argv
    from muse_jax.tasks import vqgan

    model, params, config = vqgan.load_tokenizer(FLAGS.tokenizer)
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
    size = config.data.image_size
    images = np.random.default_rng(0).uniform(-1, 1, (FLAGS.images, size, size, 3))
    images = images.astype(np.float32)
    rates = {}
    for batch_size in (int(b) for b in FLAGS.batch_sizes):
        np.asarray(encode(params, images[:batch_size]))  # compile
        start = time.perf_counter()
        for i in range(0, FLAGS.images - batch_size + 1, batch_size):
            np.asarray(encode(params, images[i:i + batch_size]))
        done = FLAGS.images // batch_size * batch_size
        rates[batch_size] = done / (time.perf_counter() - start)
        print(f"batch {batch_size:4d}: {rates[batch_size]:6.1f} images/s", flush=True)
    best = max(rates, key=rates.get)
    print(f"fastest: batch {best}, {rates[best] / rates[max(rates)]:.2f}x batch {max(rates)}'s rate")


if __name__ == "__main__":
    app.run(main)
