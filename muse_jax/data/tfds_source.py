"""Prepared TFDS image-text datasets (COCO captions, or any other) as a random-access source.

Reads through `tfds.data_source`, which needs the dataset prepared in the ArrayRecord file
format. Nothing is downloaded here: a dataset that is missing, or prepared as TFRecord, fails
with a one-line message that says how to prepare it. Images are read as their encoded bytes
(SkipDecoding) and decoded by muse_jax/data/decode.py, so a bad file is skipped like any other.
"""
from __future__ import annotations

from muse_jax.data import decode
from muse_jax.errors import UserError

# Where captions sit in common datasets; otherwise the first text feature is used.
CAPTION_KEYS = ("captions/text", "caption", "captions", "text", "caption/text")


def _prepare_hint(name: str, data_dir: str) -> str:
    where = f" --data_dir={data_dir}" if data_dir else ""
    return (f"prepare it once with `tfds build {name.split(':')[0]}{where} "
            "--file_format=array_record` (COCO needs its files downloaded first; see the TFDS "
            "catalog) and set config.data.path to that data_dir")


def _flat_features(features, prefix=""):
    """{"a/b": feature} for every leaf feature of a (nested) FeaturesDict or Sequence."""
    import tensorflow_datasets as tfds

    inner = features.feature if isinstance(features, tfds.features.Sequence) else features
    if isinstance(inner, tfds.features.FeaturesDict):
        out = {}
        for key, feature in inner.items():
            out.update(_flat_features(feature, f"{prefix}{key}/"))
        return out
    return {prefix.rstrip("/"): inner}


class TfdsSource:
    """One split of a prepared TFDS dataset: `[i]` -> {"image", "caption", "captions", "note"}."""

    def __init__(self, name: str, data_dir: str, split: str, hold_out: tuple[str, int] | None = None,
                 min_side: int = 0):
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core import read_only_builder

        if not name:
            raise UserError("config.data.tfds_name must name a TFDS dataset for data.source=tfds "
                            "(e.g. coco_captions/2014)")
        where = data_dir or "the default TFDS data_dir"
        try:
            # From the prepared files alone: no builder code runs (COCO's would import TF).
            builder = read_only_builder.builder_from_files(name, data_dir=data_dir or None)
        except Exception:  # noqa: BLE001  DatasetNotFoundError and friends: nothing prepared
            base = name.split("/")[0].split(":")[0]
            if base not in tfds.list_builders(with_community_datasets=False):
                raise UserError(f"TFDS dataset {name} is neither a TFDS catalog dataset nor "
                                f"prepared in {where} (config.data.tfds_name, config.data.path)"
                                ) from None
            raise UserError(f"TFDS dataset {name} is not prepared in {where}; "
                            + _prepare_hint(name, data_dir)) from None
        file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
        if file_format not in ("array_record", "parquet"):
            raise UserError(f"TFDS dataset {name} in {where} is prepared as {file_format}, which "
                            "has no random access; " + _prepare_hint(name, data_dir))
        if split not in builder.info.splits:
            raise UserError(f"TFDS dataset {name} has no split {split!r} "
                            f"(it has {', '.join(sorted(builder.info.splits))})")
        flat = _flat_features(builder.info.features)
        images = [k for k, f in flat.items() if isinstance(f, tfds.features.Image)]
        texts = [k for k, f in flat.items() if isinstance(f, tfds.features.Text)]
        if not images:
            raise UserError(f"TFDS dataset {name} has no image feature")
        self._image_key = images[0]
        self._caption_key = next((k for k in CAPTION_KEYS if k in texts), texts[0] if texts else None)
        self._source = builder.as_data_source(
            split=split, decoders={self._image_key: tfds.decode.SkipDecoding()})
        self._min_side = min_side
        total = len(self._source)
        # hold_out = ("train" | "eval", n): the last n examples are the eval split.
        self._start, self._len = 0, total
        if hold_out is not None:
            part, n = hold_out
            if total <= n:
                raise UserError(f"TFDS {name}[{split}] holds {total} examples, "
                                f"need more than eval_size={n}")
            self._start, self._len = (total - n, n) if part == "eval" else (0, total - n)

    def __len__(self) -> int:
        return self._len

    def _get(self, example: dict, key: str | None):
        for part in (key or "").split("/") if key else ():
            example = example[part]
        return example

    def __getitem__(self, index: int) -> dict:
        example = self._source[self._start + int(index)]
        image, note, _ = decode.decode_image(self._get(example, self._image_key), self._min_side)
        captions = self._captions(example)
        return {"image": image, "caption": captions[0], "captions": captions, "note": note}

    def _captions(self, example: dict) -> tuple[str, ...]:
        if self._caption_key is None:
            return ("",)
        raw = self._get(example, self._caption_key)
        raw = [raw] if isinstance(raw, (bytes, str)) else list(raw)
        captions, _ = decode.clean_captions(raw)
        return tuple(captions)

    def get_caption(self, index: int) -> str:
        return self._captions(self._source[self._start + int(index)])[0]
