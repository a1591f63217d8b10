"""Random-access data sources: `len(source)` and `source[i] -> {"image": uint8 HWC, "caption": str}`.

Grain shuffles, shards and prefetches them (see pipeline.py). `get_caption(i)` reads a caption
alone, for tools that precompute caption embeddings. The shapes source is procedural
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
        return {"image": image, "caption": self.get_caption(index)}

    def get_caption(self, index: int) -> str:
        caption_file = self._files[index].with_suffix(".txt")
        return caption_file.read_text(errors="replace").strip() if caption_file.exists() else ""


def create(data, split: str, seed: int):
    """The source named by `data.source` for `split` ("train" or "eval")."""
    if data.source == "shapes":
        train_size = data.shapes_train_size or None  # None: endless
        return ShapesSource(image_size=data.image_size, split=split, seed=seed,
                            max_objects=data.shapes_max_objects,
                            size=data.eval_size if split == "eval" else train_size)
    if data.source == "image_folder":
        return ImageFolderSource(data.path, split, data.eval_size)
    raise DatasetError(f"config.data.source must be 'shapes' or 'image_folder', got {data.source!r}")


def create_finite(data, split: str, seed: int):
    """`create`, for the precompute tools, which go through a whole split once."""
    if data.source == "shapes" and split == "train" and not data.shapes_train_size:
        raise DatasetError("the shapes train split is endless: set --config.data.shapes_train_size "
                           "to precompute (and then train on) its first N examples")
    return create(data, split, seed)


def captions(source) -> list[str]:
    """Every caption of a source in order, read without decoding an image."""
    return [source.get_caption(i) for i in range(len(source))]
