"""Grain input pipeline: seeded shuffle, per-process shard, preprocess, batch, prefetch.

The training iterator is a `grain.DatasetIterator` whose state is saved beside the model in
every checkpoint, so a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import grain
import jax
import numpy as np
from PIL import Image

from muse_jax.data import sources


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to `size`, crop a square (random for training), scale to [-1, 1]."""
    size: int
    random_crop: bool
    keep_caption: bool = False

    def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
        image = example["image"]
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
        out = {"image": image.astype(np.float32) / 127.5 - 1.0}
        if self.keep_caption:
            out["caption"] = example["caption"]
        return out


def _process(process_index, process_count):
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return index, count


def train_iterator(config, process_index: int | None = None, process_count: int | None = None,
                   keep_caption: bool = False) -> grain.DatasetIterator:
    """Infinite iterator of process-local batches (global batch / process count each)."""
    index, count = _process(process_index, process_count)
    data = config.data
    ds = grain.MapDataset.source(sources.create(data, "train", config.seed))
    ds = ds.seed(config.seed).shuffle().repeat()
    ds = ds[index::count]
    ds = ds.random_map(Preprocess(data.image_size, random_crop=True, keep_caption=keep_caption))
    ds = ds.batch(data.batch_size // count, drop_remainder=True)
    it = ds.to_iter_dataset()
    if data.num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
    return iter(it)


def eval_batches(config, process_index: int | None = None, process_count: int | None = None,
                 keep_caption: bool = False) -> Iterator[dict]:
    """The first `data.eval_size` held-out examples, in order, as process-local batches."""
    index, count = _process(process_index, process_count)
    data = config.data
    ds = grain.MapDataset.source(sources.create(data, "eval", config.seed))
    ds = ds[:data.eval_size][index::count]
    ds = ds.map(Preprocess(data.image_size, random_crop=False, keep_caption=keep_caption))
    return iter(ds.batch(data.eval_batch_size // count, drop_remainder=True))
