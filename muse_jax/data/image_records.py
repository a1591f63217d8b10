"""Converted image-text examples in ArrayRecord shards, and the training source that reads them.

`python -m muse_jax.data.convert` writes them in the layout of muse_jax/data/shards.py
(metadata.json + `images-NNNNN-of-NNNNN.array_record`). Each record is a msgpack map

  image     the encoded file (JPEG/PNG/WebP as found when it decoded cleanly, else re-encoded)
  captions  list of str, at least one (possibly "")
  width, height   of the decoded, EXIF-rotated image
  key       where it came from (file path, tar member, row number), for tracing bad examples

Images stay encoded: decoding in the input workers is cheaper than storing pixels, and the
original bytes mean nothing valid was lost in conversion. Caption embeddings for them are
computed like those of any other source: `python -m muse_jax.text.precompute` with
`data.source=array_record`, which reads `get_caption(i)` (the first caption).
"""
from __future__ import annotations

import msgpack

from muse_jax.data import decode, shards
from muse_jax.errors import UserError

PREFIX = "images"
FORMAT = "muse_jax.images.v1"


def serialize(image: bytes, captions: list[str], width: int, height: int, key: str) -> bytes:
    return msgpack.packb({
        "image": image, "captions": list(captions), "width": int(width), "height": int(height),
        "key": key})


def deserialize(record: bytes) -> dict:
    return msgpack.unpackb(record)


class ImageRecords(shards.ShardReader):
    """A converted directory (local or gs://): `[i]` -> the record dict above."""

    def __init__(self, directory: str):
        from etils import epath

        if not (epath.Path(directory) / shards.METADATA).is_file():
            raise UserError(f"{directory} holds no converted images (no {shards.METADATA}); "
                            "write them with `python -m muse_jax.data.convert`")
        super().__init__(directory, "converted images", "muse_jax.data.convert")
        if self.metadata.get("format") != FORMAT:
            raise UserError(f"{directory} holds {self.metadata.get('format', 'other records')!r}, "
                            f"not converted images ({FORMAT}); write them with "
                            "`python -m muse_jax.data.convert`")

    def __getitem__(self, index: int) -> dict:
        return deserialize(self.read(index))


class ArrayRecordSource:
    """Decoded examples of one or more converted directories, held-out split as for folders.

    `[i]` -> {"image": uint8 HWC or None, "caption": first caption, "captions": all of them,
    "note": what decoding repaired, or why the image is None}. The pipeline skips None images
    (counted); conversion already dropped every image that does not decode, so that happens
    only to shards written by other tools.
    """

    def __init__(self, path: str, split: str = "train", eval_size: int = 0, eval_path: str = "",
                 min_side: int = 0):
        if not path:
            raise UserError("config.data.path must name a converted directory "
                            "(python -m muse_jax.data.convert) for data.source=array_record")
        self._min_side = min_side
        if split == "eval" and eval_path:
            self._records, self._start = ImageRecords(eval_path), 0
            self._len = len(self._records)
            return
        self._records = ImageRecords(path)
        held_out = 0 if eval_path else eval_size
        total = len(self._records)
        if total <= held_out:
            raise UserError(f"{path} holds {total} images, need more than eval_size={held_out}")
        self._start, self._len = (total - held_out, held_out) if split == "eval" else (0, total - held_out)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        record = self._records[self._start + int(index)]
        image, note, _ = decode.decode_image(record["image"], self._min_side)
        captions = tuple(record["captions"]) or ("",)
        return {"image": image, "caption": captions[0], "captions": captions, "note": note}

    def get_caption(self, index: int) -> str:
        captions = self._records[self._start + int(index)]["captions"]
        return captions[0] if captions else ""
