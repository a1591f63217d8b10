"""Scores a trained base model by sampling held-out prompts.

  python -m muse_jax.evaluate --workdir=workdirs/base_shapes --eval=shapes_oracle --num_samples=256

`shapes_oracle`: the captions of the shapes eval split are sampled once each and the shapes
oracle (muse_jax/data/shapes.py) parses every image back into objects: "match" is the share
of images that show exactly the caption's objects, "color" / "shape" / "cell" the per-object
accuracies. `shapes_inpaint` (Muse 3.3): in each held-out image the cell of its first object
is masked and regenerated from a caption that puts another colour and shape there; "match"
scores the whole result against that caption, "region" the regenerated cell alone, and
"kept_tokens" the share of tokens outside the mask left untouched (1.0 by construction).
Prints one JSON object with the scores and the sampling settings used.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
from absl import flags

from muse_jax import errors
from muse_jax.errors import UserError

FLAGS = flags.FLAGS
EVALS = ("shapes_oracle", "shapes_inpaint")


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


def _eval_source(pipe, name: str):
    from muse_jax.data import shapes

    if pipe.config.data.source != "shapes":
        raise UserError(f"{name} needs a model trained on shapes, this one used "
                        f"data.source={pipe.config.data.source!r}")
    return shapes.ShapesSource(image_size=pipe.config.data.image_size, split="eval",
                               seed=pipe.config.seed,
                               max_objects=pipe.config.data.shapes_max_objects)


def _to_uint8(images) -> np.ndarray:
    return np.clip((np.asarray(images) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def shapes_oracle(pipe, options, num_samples: int, seed: int, batch_size: int) -> dict:
    from muse_jax.data import shapes
    from muse_jax.sample import sample_tokens

    source = _eval_source(pipe, "shapes_oracle")
    captions = [source.get_caption(i) for i in range(num_samples)]
    tokens = sample_tokens(pipe, captions, options, seed, batch_size=batch_size, progress=True)
    return shapes.score_batch(_to_uint8(pipe.decode(tokens)), captions)


def shapes_inpaint(pipe, options, num_samples: int, seed: int, batch_size: int) -> dict:
    from muse_jax.data import shapes
    from muse_jax.sample import sample_tokens, token_mask_from_pixels

    source = _eval_source(pipe, "shapes_inpaint")
    rng = np.random.default_rng(seed)
    size = pipe.config.data.image_size
    images, token_masks, captions, wanted = [], [], [], []
    for i in range(num_samples):
        objects = source.objects(i)
        old = objects[0]
        new = shapes.ShapeObject(rng.choice([c for c in shapes.COLORS if c != old.color]),
                                 rng.choice([s for s in shapes.SHAPES if s != old.shape]), old.cell)
        images.append(source[i]["image"].astype(np.float32) / 127.5 - 1.0)
        token_masks.append(token_mask_from_pixels(shapes.cell_mask(old.cell, size), pipe.grid))
        captions.append(shapes.caption([new, *objects[1:]]))
        wanted.append(new)
    tokens = pipe.tokens_of(np.stack(images))
    token_masks = np.stack(token_masks)
    canvas = np.where(token_masks, pipe.model.mask_id, tokens).astype(np.int32)
    out = sample_tokens(pipe, captions, options, seed, canvas=canvas, batch_size=batch_size,
                        progress=True)
    results = _to_uint8(pipe.decode(out))
    region = [any(o == new for o in shapes.parse_image(im)) for im, new in zip(results, wanted)]
    return {**shapes.score_batch(results, captions), "region": float(np.mean(region)),
            "kept_tokens": float(np.mean((out == tokens)[~token_masks]))}


def evaluate(workdir: str, eval_name: str, num_samples: int, options, seed: int = 0,
             batch_size: int = 64) -> dict:
    from muse_jax.sample import load_pipeline

    options.check()
    if num_samples < 1:
        raise UserError(f"--num_samples must be >= 1, got {num_samples}")
    pipe = load_pipeline(workdir)
    run = {"shapes_oracle": shapes_oracle, "shapes_inpaint": shapes_inpaint}[eval_name]
    scores = run(pipe, options, num_samples, seed, batch_size)
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
