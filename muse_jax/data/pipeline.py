"""Grain input pipeline: seeded shuffle, skip unusable examples, preprocess, per-process rows.

The training iterator is a `grain.DatasetIterator` whose state is saved beside the model in
every checkpoint, so a resumed run sees exactly the batches an uninterrupted one would.
Everything random or conditional (shuffle, which examples are skipped and what replaces them,
crops, caption choice) is a function of an example's position in the global stream, and each
process reads its own contiguous rows of every global batch: the same seed gives the same
global batches on any number of processes that divides the batch.
Precomputed inputs (base stage: `data.{train,eval}_text_embeddings`, `data.{train,eval}_tokens`)
are joined to the source by index before shuffling, so they follow the same order; with the
tokens precomputed no image is read, and training reads a batch's records in one call
(`PrecomputedBatches`: the per-example chain's batches, for half its CPU).
"""
from __future__ import annotations

from typing import Iterator

import grain
import jax
import numpy as np
from absl import logging

from muse_jax.data import sources
from muse_jax.data.shards import EmbeddingRecords, TokenRecords
from muse_jax.data.transforms import COUNTERS, PRECOMPUTED, Filter, Preprocess  # noqa: F401
from muse_jax.errors import UserError

MAX_CONSECUTIVE_SKIPS = 64  # more unusable examples in a row than this: the config is wrong
# Elements are whole batches here: grain's default (16 threads, 500 elements read ahead) is
# sized for small records and would hold hundreds of batches. Two batches in flight per
# process (main or worker); PIL releases the GIL while decoding and resizing.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


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
            _add_embedding(out, self.embeddings[index])
        return out

    def __getitems__(self, indices) -> list[dict]:
        """Examples `indices` of a split whose tokens are precomputed, each record set read in
        one call (for one example `[i]` is cheaper: array_record's batch read has a thread
        pool's overhead)."""
        out = [{"caption": r["caption"], "tokens": r["tokens"]}
               for r in self.tokens.__getitems__(indices)]
        if self.embeddings is not None:
            for example, record in zip(out, self.embeddings.__getitems__(indices)):
                _add_embedding(example, record)
        return out


def _add_embedding(example: dict, record: dict) -> None:
    example.update(text_emb=record["embedding"], text_mask=record["mask"])


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
    embeddings = EmbeddingRecords(embeddings) if embeddings else None
    tokens = TokenRecords(tokens) if tokens else None
    for records in (embeddings, tokens):
        if records is not None:
            check_aligned(records, source, split)
    return Precomputed(source, embeddings, tokens)


class Checked(grain.MapDataset):
    """Example i, or if it is unusable (see transforms.Filter) the next usable one after it.

    Replacing rather than dropping keeps every batch full and the stream a function of the
    position alone, which is what makes batches independent of the process count. Each
    example carries `_skipped` (1 if it stands in for an unusable one) and `_repaired` (1 if
    its image was converted, e.g. CMYK or 16-bit to 8-bit RGB).
    """

    def __init__(self, parent: grain.MapDataset, check: Filter):
        super().__init__(parent)
        self._check = check

    def __len__(self) -> int:
        return len(self._parent)

    def __str__(self) -> str:
        return f"Checked({self._check})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        n = len(self._parent)
        for tries in range(MAX_CONSECUTIVE_SKIPS):
            example = self._parent[(index + tries) % n]
            reason = self._check.reason(example)
            if not reason:
                repaired = example.get("image") is not None and bool(example.get("note"))
                return {**example, "_skipped": np.int32(tries > 0), "_repaired": np.int32(repaired)}
            logging.log_every_n_seconds(logging.WARNING, "data: skipping example %d: %s", 10,
                                        (index + tries) % n, reason)
        raise UserError(f"{MAX_CONSECUTIVE_SKIPS} examples in a row are unusable (last: {reason}); "
                        "check config.data.min_size / max_aspect_ratio and the data itself")


class ProcessRows(grain.MapDataset):
    """Process `index` of `count`: rows [index*b, (index+1)*b) of every global batch of B = b*count.

    Concatenating the processes' batches gives the single-process batch, row for row.
    """

    def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
        super().__init__(parent)
        self._global, self._index, self._local = global_batch, index, global_batch // count

    def __len__(self) -> int:
        return len(self._parent) // self._global * self._local

    def __str__(self) -> str:
        return f"ProcessRows(batch={self._global}, rows={self._index * self._local}+{self._local})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        step, row = divmod(index, self._local)
        return self._parent[step * self._global + self._index * self._local + row]


class PrecomputedBatches(grain.MapDataset):
    """Process-local batch i of a split whose tokens are precomputed (no image is read): row for
    row the batch of the per-example chain (`example_batches`: the same shuffle, no unusable
    example, the same rows of each global batch), each record set read in one call a batch.
    The per-example chain spends a read call and grain's bookkeeping on every example: 15.1
    against 7.2 ms of CPU a batch of 32 of the demo's records through the train iterator's read
    threads (`benchmarks/precomputed_batches.py`, 2026-12-07), CPU that a CPU host takes from
    the cores the train step runs on."""

    def __init__(self, source: Precomputed, seed: int, global_batch: int, index: int, count: int,
                 keep_caption: bool):
        super().__init__(grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat())
        self._source, self._keep_caption = source, keep_caption
        self._global, self._local = global_batch, global_batch // count
        self._first = index * self._local

    def __len__(self) -> int:
        return len(self._parent) // self._global

    def __str__(self) -> str:
        return f"PrecomputedBatches(batch={self._global}, rows={self._first}+{self._local})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        start = index * self._global + self._first
        examples = self._source.__getitems__(
            [self._parent[p] for p in range(start, start + self._local)])
        batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]
                 if k != "caption" or self._keep_caption}
        return {**batch, **{k: np.zeros(self._local, np.int32) for k in COUNTERS}}


class CountSkips:
    """Removes the per-example counters from batches, totals them, and logs the totals."""

    def __init__(self, split: str):
        self.split, self.examples, self.skipped, self.repaired = split, 0, 0, 0

    def __call__(self, batch: dict) -> dict:
        batch = dict(batch)
        skipped, repaired = (int(np.sum(batch.pop(k))) for k in COUNTERS)
        self.examples += len(next(iter(batch.values())))
        self.skipped, self.repaired = self.skipped + skipped, self.repaired + repaired
        if skipped or repaired:
            logging.log_every_n_seconds(
                logging.INFO, "data (%s): %d unusable examples replaced, %d images repaired, "
                "of %d read in this process", 60, self.split, self.skipped, self.repaired,
                self.examples)
        return batch


def _filter(data) -> Filter:
    return Filter(data.get("min_size", 0), data.get("max_aspect_ratio", 0.0))


def _process(process_index, process_count):
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return index, count


def example_batches(source, data, seed: int, index: int, count: int,
                    keep_caption: bool) -> grain.MapDataset:
    """Process-local training batches of `source` made an example at a time: shuffled and
    repeated, unusable examples replaced, preprocessed, these rows of each global batch."""
    ds = Checked(grain.MapDataset.source(source).seed(seed).shuffle().repeat(), _filter(data))
    ds = ds.random_map(Preprocess(data.image_size, random_crop=True, keep_caption=keep_caption,
                                  random_flip=data.get("random_flip", False)))
    ds = ProcessRows(ds, data.batch_size, index, count)
    return ds.batch(data.batch_size // count, drop_remainder=True)


def train_iterator(config, process_index: int | None = None, process_count: int | None = None,
                   keep_caption: bool = False) -> grain.DatasetIterator:
    """Infinite iterator of process-local batches (global batch / process count each)."""
    index, count = _process(process_index, process_count)
    data = config.data
    source = create_source(data, "train", config.seed)
    if isinstance(source, Precomputed) and source.tokens is not None:
        ds = PrecomputedBatches(source, config.seed, data.batch_size, index, count, keep_caption)
    else:
        ds = example_batches(source, data, config.seed, index, count, keep_caption)
    it = ds.to_iter_dataset(READ_OPTIONS)
    if data.num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
    return iter(it.map(CountSkips("train")))


def eval_batches(config, process_index: int | None = None, process_count: int | None = None,
                 keep_caption: bool = False) -> Iterator[dict]:
    """The first `data.eval_size` held-out examples, in order, as process-local batches."""
    index, count = _process(process_index, process_count)
    data = config.data
    ds = grain.MapDataset.source(create_source(data, "eval", config.seed))
    ds = Checked(ds[:data.eval_size], _filter(data))
    ds = ds.map(Preprocess(data.image_size, random_crop=False, keep_caption=keep_caption))
    ds = ProcessRows(ds, data.eval_batch_size, index, count)
    return iter(ds.batch(data.eval_batch_size // count, drop_remainder=True).map(CountSkips("eval")))
