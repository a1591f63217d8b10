"""Per-example transforms: which images are usable, and how one becomes a training input.

`Filter` says why an example cannot be used (no image, too small, too elongated); the pipeline
replaces such examples and counts them. `Preprocess` resizes the shorter side, crops a square
(centre for evaluation, random for training), picks one caption when there are several and
scales pixels to [-1, 1]. Horizontal flips are off unless asked for: they turn "a dog left of
a cat" into a picture of the opposite.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from muse_jax.errors import UserError
from muse_jax.images import to_model

PRECOMPUTED = ("tokens", "text_emb", "text_mask")  # passed through Preprocess untouched
COUNTERS = ("_skipped", "_repaired")  # per-example counts the pipeline adds and later removes


@dataclasses.dataclass(frozen=True)
class Filter:
    """Usability test on decoded examples; `reason(example)` is "" for a usable one."""
    min_size: int = 0  # shorter side at least this (and at least 1 px)
    max_aspect_ratio: float = 0.0  # longer / shorter side at most this (0: any)

    def reason(self, example: dict) -> str:
        if "image" not in example:  # precomputed tokens stand in for the image
            return ""
        image = example["image"]
        if image is None:
            return example.get("note") or "no image"
        h, w = image.shape[:2]
        if min(h, w) < max(1, self.min_size):
            return f"smaller than data.min_size={self.min_size}"
        if self.max_aspect_ratio and max(h, w) / min(h, w) > self.max_aspect_ratio:
            return f"aspect ratio over data.max_aspect_ratio={self.max_aspect_ratio}"
        return ""


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to `size`, crop a square (random for training), scale to [-1, 1].

    With an rng (training) the crop, the caption among several and, if `random_flip`, a
    horizontal flip are drawn from it; without one the crop is central and the caption the
    first. Precomputed fields and the pipeline's counters pass through; an example without an
    image (tokens instead) keeps none.
    """
    size: int
    random_crop: bool
    keep_caption: bool = False
    random_flip: bool = False

    def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
        out = {k: example[k] for k in PRECOMPUTED + COUNTERS if k in example}
        if self.keep_caption:
            captions = example.get("captions")
            # With precomputed embeddings the caption must stay the one they were computed from.
            if rng is not None and captions and len(captions) > 1 and "text_emb" not in example:
                out["caption"] = captions[rng.integers(len(captions))]
            else:
                out["caption"] = example["caption"]
        if "image" not in example:
            return out
        image = example["image"]
        if image is None:  # the training pipeline replaces these first (pipeline.Checked)
            raise UserError(f"an example has no usable image ({example.get('note')}); convert "
                            "the data with `python -m muse_jax.data.convert`, which drops them")
        h, w = image.shape[:2]
        if min(h, w) != self.size:
            scale = self.size / min(h, w)
            nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
            h, w = nh, nw
        if self.random_crop and rng is not None:
            top, left = rng.integers(0, h - self.size + 1), rng.integers(0, w - self.size + 1)
        else:
            top, left = (h - self.size) // 2, (w - self.size) // 2
        image = image[top:top + self.size, left:left + self.size]
        if self.random_flip and rng is not None and rng.random() < 0.5:
            image = image[:, ::-1]
        out["image"] = to_model(image)
        return out
