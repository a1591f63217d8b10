"""Scores a trained base model by sampling held-out prompts.

  python -m muse_jax.evaluate --workdir=workdirs/base_shapes --eval=shapes_oracle --num_samples=256

`shapes_oracle`: the captions of the shapes eval split are sampled once each and the shapes
oracle (muse_jax/data/shapes.py) parses every image back into objects: "match" is the share
of images that show exactly the caption's objects, "color" / "shape" / "cell" the per-object
accuracies. `shapes_inpaint` (Muse 3.3): in each held-out image the cell of its first object
is masked and regenerated from a caption that puts another colour and shape there; "match"
scores the whole result against that caption, "region" the regenerated cell alone, and
"kept_tokens" the share of tokens outside the mask left untouched (1.0 by construction).
`shapes_sr` (needs --sr_workdir): super-resolution, see `shapes_sr`.
Prints one JSON object with the scores and the sampling settings used.

  python -m muse_jax.evaluate --eval=shapes_sr --workdir=workdirs/base_shapes \
      --sr_workdir=workdirs/sr_shapes --num_samples=256
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
from absl import flags

from muse_jax import errors
from muse_jax.errors import UserError

FLAGS = flags.FLAGS
EVALS = ("shapes_oracle", "shapes_inpaint", "shapes_sr")


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
    flags.DEFINE_string("sr_workdir", None, "shapes_sr: workdir of a super-resolution run.")
    flags.DEFINE_integer("sr_steps", 8, "shapes_sr: super-resolution decoding steps.")
    flags.DEFINE_float("sr_guidance", 4.0, "shapes_sr: final super-resolution guidance scale.")


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


def _psnr(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images [B,H,W,3]."""
    mse = np.mean((images.astype(np.float64) - targets.astype(np.float64)) ** 2, axis=(1, 2, 3))
    return 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC))
                     for im in images])


def shapes_sr(pipe, sr_pipe, options, sr_options, num_samples: int, seed: int,
              batch_size: int) -> dict:
    """Super-resolution on held-out shapes captions, from two kinds of low-res tokens.

    "real": the base tokenizer's tokens of the caption's scene rendered at low resolution; the
    SR output is compared with the same scene rendered at high resolution ("psnr", and for
    scale "psnr_bicubic": the decoded low-res image upsampled bicubically, and
    "psnr_tokenizer": the high-res tokenizer's own reconstruction, the ceiling).
    "generated": the base model's samples of the captions (the two-stage cascade).
    For both, "parse_agreement" is the share of SR outputs that the shapes oracle parses into
    exactly the objects it parses from their decoded low-res input, and "match" the share that
    show exactly the caption's objects.
    """
    from muse_jax.data import shapes
    from muse_jax.sample import sample_two_stage, super_resolve

    _eval_source(sr_pipe, "shapes_sr")  # raises unless the SR model was trained on shapes
    low_size, high_size = pipe.config.data.image_size, sr_pipe.config.data.image_size
    if sr_pipe.config.low_res.image_size != low_size:
        raise UserError(f"the SR run works from {sr_pipe.config.low_res.image_size} px, the base "
                        f"model makes {low_size} px images")
    max_objects = sr_pipe.config.data.shapes_max_objects
    low_source, high_source = (shapes.ShapesSource(image_size=size, split="eval",
                                                   seed=sr_pipe.config.seed, max_objects=max_objects)
                               for size in (low_size, high_size))
    ids = range(num_samples)
    captions = [low_source.get_caption(i) for i in ids]
    truth = np.stack([high_source[i]["image"] for i in ids])  # the same scenes: same index, seed
    low_images = np.stack([low_source[i]["image"] for i in ids]).astype(np.float32) / 127.5 - 1

    def agreement(low, high):
        return float(np.mean([shapes.parse_image(a) == shapes.parse_image(b)
                              for a, b in zip(low, high)]))

    low_tokens = np.concatenate([pipe.tokens_of(low_images[i:i + batch_size])
                                 for i in range(0, num_samples, batch_size)])
    high = _to_uint8(sr_pipe.decode(super_resolve(sr_pipe, low_tokens, captions, sr_options, seed,
                                                  batch_size=batch_size)))
    low = _to_uint8(pipe.decode(low_tokens))
    recon = _to_uint8(sr_pipe.decode(sr_pipe.tokens_of(truth.astype(np.float32) / 127.5 - 1)))
    real = {"parse_agreement": agreement(low, high),
            "match": shapes.score_batch(high, captions)["match"],
            "psnr": float(np.mean(_psnr(high, truth))),
            "psnr_bicubic": float(np.mean(_psnr(_upsample(low, high_size), truth))),
            "psnr_tokenizer": float(np.mean(_psnr(recon, truth)))}

    out = sample_two_stage(pipe, sr_pipe, captions, options, sr_options, seed,
                           batch_size=batch_size, progress=True)
    low, high = _to_uint8(pipe.decode(out["low_res"])), _to_uint8(out["images"])
    generated = {"parse_agreement": agreement(low, high),
                 "match": shapes.score_batch(high, captions)["match"],
                 "match_low_res": shapes.score_batch(low, captions)["match"]}
    return {"real": real, "generated": generated}


def evaluate(workdir: str, eval_name: str, num_samples: int, options, seed: int = 0,
             batch_size: int = 64, sr_workdir: str | None = None, sr_options=None) -> dict:
    from muse_jax.sample import load_pipeline, load_sr_pipeline

    options.check()
    if num_samples < 1:
        raise UserError(f"--num_samples must be >= 1, got {num_samples}")
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    if eval_name == "shapes_sr" and not sr_workdir:
        raise UserError("--eval=shapes_sr needs --sr_workdir (a super-resolution run)")
    pipe = load_pipeline(workdir)
    if eval_name == "shapes_sr":
        sr_options = sr_options or dataclasses.replace(options, steps=8)
        sr_options.check()
        scores = shapes_sr(pipe, load_sr_pipeline(sr_workdir, pipe), options, sr_options,
                           num_samples, seed, batch_size)
        scores = {"sr_workdir": sr_workdir,
                  **{f"sr_{k}": v for k, v in dataclasses.asdict(sr_options).items()}, **scores}
    else:
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
    sr_options = dataclasses.replace(options, steps=FLAGS.sr_steps, guidance=FLAGS.sr_guidance)
    result = evaluate(FLAGS.workdir, FLAGS.eval, FLAGS.num_samples, options, FLAGS.seed,
                      FLAGS.batch_size, FLAGS.sr_workdir, sr_options)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    define_flags()
    errors.run(main)
