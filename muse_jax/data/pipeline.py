"""Grain input pipeline: seeded shuffle, per-process shard, preprocess, batch, prefetch.

The training iterator is a `grain.DatasetIterator` whose state is saved beside the model in
every checkpoint, so a resumed run sees exactly the batches an uninterrupted one would.
Precomputed inputs (base stage: `data.{train,eval}_text_embeddings`, `data.{train,eval}_tokens`)
are joined to the source by index before shuffling, so they follow the same order.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import grain
import jax
import numpy as np
from PIL import Image

from muse_jax.data import sources
from muse_jax.errors import UserError

PRECOMPUTED = ("tokens", "text_emb", "text_mask")  # passed through Preprocess untouched


class Precomputed:
    """Example i of `source` joined with record i of precomputed embeddings and/or tokens.

    With tokens the image is never read (so never randomly cropped: the tokens are of centre
    crops) and the caption comes from the token record; with embeddings, examples carry
    `text_emb` [L, D] and `text_mask` [L] for the caption.
    """

    def __init__(self, source, embeddings=None, tokens=None):
        self.source, self.embeddings, self.tokens = source, embeddings, tokens

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        if self.tokens is None:
            out = dict(self.source[index])
        else:
            record = self.tokens[index]
            out = {"caption": record["caption"], "tokens": record["tokens"]}
        if self.embeddings is not None:
            record = self.embeddings[index]
            out.update(text_emb=record["embedding"], text_mask=record["mask"])
        return out


def check_aligned(records, source, split: str) -> None:
    """One-line UserError unless record i belongs to example i: same count, same captions."""
    if len(records) != len(source):
        raise UserError(f"{records.directory} holds {len(records)} records but the {split} split "
                        f"has {len(source)} examples: precompute them from this config's data")
    n = len(source)
    for i in sorted({0, n // 2, n - 1}):
        theirs, ours = records[i]["caption"], source.get_caption(i)
        if theirs != ours:
            raise UserError(f"{records.directory} was not computed from this {split} split: "
                            f"record {i} has caption {theirs!r:.80}, example {i} {ours!r:.80}")


def create_source(data, split: str, seed: int):
    """The split's source, joined with the precomputed inputs the (base) config names, if any."""
    source = sources.create(data, split, seed)
    embeddings, tokens = data.get(f"{split}_text_embeddings"), data.get(f"{split}_tokens")
    if not embeddings and not tokens:
        return source
    from muse_jax.data.precompute_tokens import TokenRecords
    from muse_jax.text.records import EmbeddingRecords

    embeddings = EmbeddingRecords(embeddings) if embeddings else None
    tokens = TokenRecords(tokens) if tokens else None
    for records in (embeddings, tokens):
        if records is not None:
            check_aligned(records, source, split)
    return Precomputed(source, embeddings, tokens)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to `size`, crop a square (random for training), scale to [-1, 1].

    Precomputed fields pass through; an example without an image (tokens instead) keeps none.
    """
    size: int
    random_crop: bool
    keep_caption: bool = False

    def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
        out = {k: example[k] for k in PRECOMPUTED if k in example}
        if self.keep_caption:
            out["caption"] = example["caption"]
        if "image" not in example:
            return out
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
        out["image"] = image.astype(np.float32) / 127.5 - 1.0
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
    ds = grain.MapDataset.source(create_source(data, "train", config.seed))
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
    ds = grain.MapDataset.source(create_source(data, "eval", config.seed))
    ds = ds[:data.eval_size][index::count]
    ds = ds.map(Preprocess(data.image_size, random_crop=False, keep_caption=keep_caption))
    return iter(ds.batch(data.eval_batch_size // count, drop_remainder=True))
