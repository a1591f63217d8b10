"""Random-access data sources: `len(source)` and `source[i]` -> an example dict.

Every example has "image" (uint8 HWC RGB) and "caption" (str). Sources of real images add
"captions" (all of an image's captions, the first being "caption") and "note" (decode.py's
repair, or the reason "image" is None); the pipeline skips None images and counts notes.
Grain shuffles, shards and prefetches them (see pipeline.py). `get_caption(i)` reads the first
caption alone, for tools that precompute caption embeddings.

  shapes        procedural, no files (shapes.py)
  image_folder  a directory of images with optional same-name .txt captions, one a line
  array_record  shards written by `python -m muse_jax.data.convert`, local or gs://
  tfds          a prepared TFDS dataset (tfds_source.py)
"""
from __future__ import annotations

from pathlib import Path

from muse_jax.data import decode
from muse_jax.data.shapes import ShapesSource
from muse_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class DatasetError(UserError):
    """A dataset that is missing, empty or unknown."""


class ImageFolderSource:
    """Images under a directory (sorted, recursive); the last `eval_size` files are held out."""

    def __init__(self, path: str, split: str = "train", eval_size: int = 0, min_side: int = 0):
        self.min_side = min_side  # JPEGs may decode at a reduced scale down to this shorter side
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
        try:
            data = self._files[index].read_bytes()
        except OSError as e:
            image, note = None, f"unreadable file ({type(e).__name__})"
        else:
            image, note, _ = decode.decode_image(data, self.min_side)
        captions = self.captions(index)
        return {"image": image, "caption": captions[0], "captions": captions, "note": note}

    def captions(self, index: int) -> tuple[str, ...]:
        caption_file = self._files[index].with_suffix(".txt")
        if not caption_file.exists():
            return ("",)
        captions, _ = decode.clean_captions(caption_file.read_bytes().splitlines())
        return tuple(captions)

    def get_caption(self, index: int) -> str:
        return self.captions(index)[0]


def shapes_jitter(data) -> bool:
    """Whether `data` (a config's data block) draws shapes jittered in size and place: the
    shapes world's default, and what runs saved before `data.shapes_jitter` existed drew."""
    return data.get("shapes_jitter", True)


def create(data, split: str, seed: int):
    """The source named by `data.source` for `split` ("train" or "eval")."""
    if data.source == "shapes":
        train_size = data.shapes_train_size or None  # None: endless
        return ShapesSource(image_size=data.image_size, split=split, seed=seed,
                            max_objects=data.shapes_max_objects,
                            size=data.eval_size if split == "eval" else train_size,
                            phrasing=data.shapes_phrasing if split == "train" else "canonical",
                            exclude_colors=tuple(data.get("shapes_exclude_colors", ())),
                            exclude_shapes=tuple(data.get("shapes_exclude_shapes", ())),
                            jitter=shapes_jitter(data))
    # Decoding JPEGs at a reduced scale stops at the training size (or the minimum-size filter).
    min_side = max(data.image_size, data.get("min_size", 0))
    if data.source == "image_folder":
        return ImageFolderSource(data.path, split, data.eval_size, min_side)
    if data.source == "array_record":
        from muse_jax.data.image_records import ArrayRecordSource
        return ArrayRecordSource(data.path, split, data.eval_size, data.get("eval_path", ""),
                                 min_side)
    if data.source == "tfds":
        from muse_jax.data.tfds_source import TfdsSource
        eval_split = data.get("tfds_eval_split", "")
        if split == "eval" and eval_split:
            return TfdsSource(data.get("tfds_name", ""), data.path, eval_split, None, min_side)
        return TfdsSource(data.get("tfds_name", ""), data.path, data.get("tfds_train_split", "train"),
                          None if eval_split else (split, data.eval_size), min_side)
    raise DatasetError("config.data.source must be one of shapes, image_folder, array_record, "
                       f"tfds; got {data.source!r}")


def create_finite(data, split: str, seed: int):
    """`create`, for the precompute tools, which go through a whole split once."""
    if data.source == "shapes" and split == "train" and not data.shapes_train_size:
        raise DatasetError("the shapes train split is endless: set --config.data.shapes_train_size "
                           "to precompute (and then train on) its first N examples")
    return create(data, split, seed)


def captions(source) -> list[str]:
    """Every caption of a source in order, read without decoding an image."""
    return [source.get_caption(i) for i in range(len(source))]
