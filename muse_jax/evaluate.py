"""Scores a trained base model by sampling held-out prompts.

  python -m muse_jax.evaluate --workdir=workdirs/base_shapes --eval=shapes_oracle --num_samples=256

`shapes_oracle`: the captions of the shapes eval split are sampled once each and the shapes
oracle (muse_jax/data/shapes.py) parses every image back into objects: "match" is the share
of images that show exactly the caption's objects, "color" / "shape" / "cell" the per-object
accuracies. Prints one JSON object with the scores and the sampling settings used.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
from absl import flags

from muse_jax import errors
from muse_jax.errors import UserError

FLAGS = flags.FLAGS
EVALS = ("shapes_oracle",)


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Workdir of a trained base-stage run.")
    flags.DEFINE_enum("eval", "shapes_oracle", list(EVALS), "Which evaluation.")
    flags.DEFINE_integer("num_samples", 256, "Held-out prompts to sample (one image each).")
    flags.DEFINE_integer("steps", 24, "Decoding steps.")
    flags.DEFINE_float("guidance", 4.0, "Final guidance scale (0: off).")
    flags.DEFINE_enum("guidance_schedule", "linear", ["linear", "cosine", "constant"],
                      "How the guidance scale rises over the steps.")
    flags.DEFINE_float("temperature", 1.0, "Token sampling temperature.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_integer("batch_size", 64, "Images per compiled call.")


def shapes_oracle(pipe, options, num_samples: int, seed: int, batch_size: int) -> dict:
    from muse_jax.data import shapes
    from muse_jax.sample import sample_tokens

    if pipe.config.data.source != "shapes":
        raise UserError(f"shapes_oracle needs a model trained on shapes, this one used "
                        f"data.source={pipe.config.data.source!r}")
    source = shapes.ShapesSource(image_size=pipe.config.data.image_size, split="eval",
                                 seed=pipe.config.seed,
                                 max_objects=pipe.config.data.shapes_max_objects)
    captions = [shapes.caption(source.objects(i)) for i in range(num_samples)]
    tokens = sample_tokens(pipe, captions, options, seed, batch_size=batch_size, progress=True)
    images = np.clip((pipe.decode(tokens) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return shapes.score_batch(images, captions)


def evaluate(workdir: str, eval_name: str, num_samples: int, options, seed: int = 0,
             batch_size: int = 64) -> dict:
    from muse_jax.sample import load_pipeline

    options.check()
    if num_samples < 1:
        raise UserError(f"--num_samples must be >= 1, got {num_samples}")
    pipe = load_pipeline(workdir)
    scores = shapes_oracle(pipe, options, num_samples, seed, batch_size)
    return {"eval": eval_name, "workdir": workdir, "num_samples": num_samples, "seed": seed,
            **dataclasses.asdict(options), **scores}


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    from muse_jax import sampling

    options = sampling.SamplingOptions(steps=FLAGS.steps, guidance=FLAGS.guidance,
                                       guidance_schedule=FLAGS.guidance_schedule,
                                       temperature=FLAGS.temperature)
    result = evaluate(FLAGS.workdir, FLAGS.eval, FLAGS.num_samples, options, FLAGS.seed,
                      FLAGS.batch_size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    define_flags()
    errors.run(main)
