"""Scores a trained base (and SR) pipeline on held-out scenes of the shapes world, by its oracle.

The shapes oracle (muse_jax/data/shapes.py) parses an image back into objects, so generation,
editing and super-resolution can be scored exactly. Each evaluation returns a dict of scores;
`muse_jax.evaluate` prints them and `muse_jax.demo` reports them.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from muse_jax import inference
from muse_jax.data import shapes, sources
from muse_jax.errors import UserError
from muse_jax.images import psnr, to_model, to_uint8


def eval_source(pipe: inference.Pipeline, name: str, size: int | None = None,
                phrasing: str = "canonical"):
    """The held-out shapes scenes `pipe` was trained beside, rendered at `size` (default: its),
    captioned in `phrasing`, and drawn as its training scenes were (jittered or not): an edit
    starts from a scene of the world the model knows."""
    if pipe.config.data.source != "shapes":
        raise UserError(f"{name} needs a model trained on shapes, this one used "
                        f"data.source={pipe.config.data.source!r}")
    return shapes.ShapesSource(image_size=size or pipe.size, split="eval", seed=pipe.config.seed,
                               max_objects=pipe.config.data.shapes_max_objects, phrasing=phrasing,
                               jitter=sources.shapes_jitter(pipe.config.data))


def _other(rng, obj: shapes.ShapeObject, color: bool = True, shape: bool = True):
    """`obj` with another colour and/or shape, in the same cell."""
    return shapes.ShapeObject(
        rng.choice([c for c in shapes.COLORS if c != obj.color]) if color else obj.color,
        rng.choice([s for s in shapes.SHAPES if s != obj.shape]) if shape else obj.shape,
        obj.cell)


@dataclasses.dataclass
class HeldOutSamples:
    """Held-out scenes, their captions and the model's image of each caption."""
    phrasing: str
    captions: list[str]
    scenes: list[list[shapes.ShapeObject]]
    images: np.ndarray  # uint8 [N, H, W, 3]

    def scores(self) -> dict:
        """"match" is the share of images showing exactly the scene's objects, "color" /
        "shape" / "cell" the per-object accuracies, "match_by_objects" the first by the
        scene's object count (`shapes.match_by_count`)."""
        each = shapes.score_each(self.images, self.scenes)
        return {"phrasing": self.phrasing, **shapes.mean_scores(each),
                "match_by_objects": shapes.match_by_count(each, self.scenes)}


def sample_held_out(pipe, options, num_samples: int, seed: int, batch_size: int,
                    phrasing: str = "canonical") -> HeldOutSamples:
    """The first `num_samples` held-out scenes, their captions in `phrasing` (canonical, or the
    held-out phrasings that training never uses), sampled once each."""
    source = eval_source(pipe, "shapes_oracle", phrasing=phrasing)
    captions = [source.get_caption(i) for i in range(num_samples)]
    tokens = inference.sample_tokens(pipe, captions, options, seed, batch_size=batch_size,
                                     progress=True)
    return HeldOutSamples(phrasing, captions, [source.objects(i) for i in range(num_samples)],
                          to_uint8(pipe.decode(tokens)))


def shapes_oracle(pipe, options, num_samples: int, seed: int, batch_size: int,
                  phrasing: str = "canonical") -> dict:
    """`HeldOutSamples.scores` of `sample_held_out`."""
    return sample_held_out(pipe, options, num_samples, seed, batch_size, phrasing).scores()


def shapes_inpaint(pipe, options, num_samples: int, seed: int, batch_size: int,
                   sr_pipe=None, sr_options=None, paste: bool = False) -> dict:
    """Muse's text-guided inpainting: in each held-out image the cell of its first object is
    masked and regenerated from a caption that puts another colour and shape there.

    "match" scores the whole result against that caption, "region" the regenerated cell alone,
    "kept_tokens" the share of tokens outside the mask left untouched (1.0 by construction).
    With `sr_pipe` the scene is given at the SR resolution, inpainted at both (base tokens of
    the decimated input, then SR tokens conditioned on them) and scored at the high resolution;
    "kept_tokens_low_res" is then the base grid's share. `paste`: the input's own pixels
    wherever the result kept its tokens (`inference.paste_unchanged`).
    """
    top = sr_pipe or pipe
    source = eval_source(top, "shapes_inpaint")
    rng = np.random.default_rng(seed)
    images, pixel_masks, captions, wanted = [], [], [], []
    for i in range(num_samples):
        objects = source.objects(i)
        new = _other(rng, objects[0])
        images.append(to_model(source[i]["image"]))
        pixel_masks.append(shapes.cell_mask(objects[0].cell, top.size))
        captions.append(shapes.caption([new, *objects[1:]]))
        wanted.append(new)
    images, pixel_masks = np.stack(images), np.stack(pixel_masks)
    if sr_pipe is None:
        tokens = pipe.tokens_of(images)
        hole = np.stack([inference.token_mask_from_pixels(m, pipe.grid) for m in pixel_masks])
        canvas = np.where(hole, pipe.mask_id, tokens).astype(np.int32)
        out = inference.sample_tokens(pipe, captions, options, seed, canvas=canvas,
                                      batch_size=batch_size, progress=True)
        results, result_tokens = pipe.decode(out), out
        kept = {"kept_tokens": float(np.mean((out == tokens)[~hole]))}
    else:
        canvas, sr_canvas = inference.inpaint_canvases(pipe, sr_pipe, images, pixel_masks)
        out = inference.sample_two_stage(pipe, sr_pipe, captions, options, sr_options, seed,
                                         canvas=canvas, sr_canvas=sr_canvas,
                                         batch_size=batch_size, progress=True)
        results, result_tokens = out["images"], out["low_res"]
        kept = {"kept_tokens": _kept(out["tokens"], sr_canvas, sr_pipe.mask_id),
                "kept_tokens_low_res": _kept(out["low_res"], canvas, pipe.mask_id)}
    if paste:
        results = inference.paste_unchanged(results, images, result_tokens, canvas)
    results = to_uint8(results)
    region = [new in shapes.parse_image(im) for im, new in zip(results, wanted)]
    return {**shapes.score_batch(results, captions), "region": float(np.mean(region)), **kept}


def _kept(out: np.ndarray, canvas: np.ndarray, mask_id: int) -> float:
    given = canvas != mask_id
    return float(np.mean(out[given] == canvas[given]))


def shapes_edit(pipe, options, edit_options, num_samples: int, seed: int,
                batch_size: int, paste: bool = False) -> dict:
    """Mask-free editing (Muse 3.3): each held-out scene with two or more objects gets a prompt
    that changes its first object's colour (even scenes) or shape (odd ones), and no mask.

    "changed": the share of results showing the changed object in its cell; "rest_kept": the
    share in which every other object is still there, unchanged; "match": the whole result is
    exactly the new caption's scene; "kept_psnr": PSNR (dB) of the result against the input
    image outside the changed object's cell (how sharp what the edit should not touch stays);
    "seconds_per_edit": wall time over all scenes (the
    compilation included) divided by their number. `paste`: the input's own pixels wherever the
    edit kept its tokens (`inference.paste_unchanged`).
    """
    source = eval_source(pipe, "shapes_edit")
    rng = np.random.default_rng(seed)
    index, images, captions, changed, rest = 0, [], [], [], []
    while len(images) < num_samples:
        objects = source.objects(index)
        index += 1
        if len(objects) < 2:
            continue
        by_colour = len(images) % 2 == 0
        new = _other(rng, objects[0], color=by_colour, shape=not by_colour)
        images.append(to_model(source[index - 1]["image"]))
        captions.append(shapes.caption([new, *objects[1:]]))
        changed.append(new)
        rest.append(objects[1:])
    start = time.perf_counter()
    images = np.stack(images)
    tokens = pipe.tokens_of(images)
    out = inference.edit(pipe, tokens, captions, options, edit_options, seed,
                         batch_size=batch_size, progress=True)
    results = pipe.decode(out)
    if paste:
        results = inference.paste_unchanged(results, images, out, tokens)
    results = to_uint8(results)
    seconds = time.perf_counter() - start
    size = pipe.config.data.image_size
    outside = np.stack([~shapes.cell_mask(new.cell, size) for new in changed])
    kept = psnr(results[outside][None], to_uint8(images)[outside][None])
    parsed = [shapes.parse_image(im) for im in results]
    return {**shapes.score_batch(results, captions),
            "changed": float(np.mean([new in p for new, p in zip(changed, parsed)])),
            "rest_kept": float(np.mean([all(o in p for o in r) for r, p in zip(rest, parsed)])),
            "changed_tokens": float(np.mean(out != tokens)),
            "kept_psnr": float(kept[0]),
            "seconds_per_edit": seconds / num_samples}


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
    low_source = eval_source(sr_pipe, "shapes_sr", pipe.size)
    high_source = eval_source(sr_pipe, "shapes_sr")
    ids = range(num_samples)
    captions = [low_source.get_caption(i) for i in ids]
    truth = np.stack([high_source[i]["image"] for i in ids])  # the same scenes: same index, seed
    low_images = to_model(np.stack([low_source[i]["image"] for i in ids]))

    def agreement(low, high):
        return float(np.mean([shapes.parse_image(a) == shapes.parse_image(b)
                              for a, b in zip(low, high)]))

    low_tokens = inference.batched(lambda p: pipe.tokens_of(low_images[p]), num_samples,
                                   batch_size)
    high = to_uint8(sr_pipe.decode(inference.super_resolve(sr_pipe, low_tokens, captions,
                                                           sr_options, seed,
                                                           batch_size=batch_size)))
    low = to_uint8(pipe.decode(low_tokens))
    recon = to_uint8(sr_pipe.decode(sr_pipe.tokens_of(to_model(truth))))
    real = {"parse_agreement": agreement(low, high),
            "match": shapes.score_batch(high, captions)["match"],
            "psnr": float(np.mean(psnr(high, truth))),
            "psnr_bicubic": float(np.mean(psnr(_upsample(low, sr_pipe.size), truth))),
            "psnr_tokenizer": float(np.mean(psnr(recon, truth)))}

    out = inference.sample_two_stage(pipe, sr_pipe, captions, options, sr_options, seed,
                                     batch_size=batch_size, progress=True)
    low, high = to_uint8(pipe.decode(out["low_res"])), to_uint8(out["images"])
    generated = {"parse_agreement": agreement(low, high),
                 "match": shapes.score_batch(high, captions)["match"],
                 "match_low_res": shapes.score_batch(low, captions)["match"]}
    return {"real": real, "generated": generated}
