"""Random-access data sources: `len(source)` and `source[i] -> {"image": uint8 HWC, "caption": str}`.

Grain shuffles, shards and prefetches them (see pipeline.py). The shapes source is procedural
and needs no files; the image-folder source reads a directory of images with optional
same-name `.txt` captions. ArrayRecord and TFDS sources come with the data converters.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from muse_jax.data.shapes import ShapesSource
from muse_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class DatasetError(UserError):
    """A dataset that is missing, empty or unknown."""


class ImageFolderSource:
    """Images under a directory (sorted, recursive); the last `eval_size` files are held out."""

    def __init__(self, path: str, split: str = "train", eval_size: int = 0):
        root = Path(path)
        if not path or not root.is_dir():
            raise DatasetError(f"dataset path {path!r} does not exist or is not a directory "
                               f"(config.data.path)")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) <= eval_size:
            raise DatasetError(f"dataset path {path!r} holds {len(files)} images, "
                               f"need more than eval_size={eval_size}")
        self._files = files[len(files) - eval_size:] if split == "eval" else files[:len(files) - eval_size]

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict:
        path = self._files[index]
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(errors="replace").strip() if caption_file.exists() else ""
        return {"image": image, "caption": caption}


def create(data, split: str, seed: int):
    """The source named by `data.source` for `split` ("train" or "eval")."""
    if data.source == "shapes":
        return ShapesSource(image_size=data.image_size, split=split, seed=seed,
                            max_objects=data.shapes_max_objects,
                            size=data.eval_size if split == "eval" else None)
    if data.source == "image_folder":
        return ImageFolderSource(data.path, split, data.eval_size)
    raise DatasetError(f"config.data.source must be 'shapes' or 'image_folder', got {data.source!r}")
