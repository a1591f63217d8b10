"""Precomputed caption embeddings in ArrayRecord shards, and a random-access reader for them.

At paper scale T5-XXL costs more per step than it is worth to rerun on captions that never
change, so `python -m muse_jax.text.precompute` encodes them once; the data pipeline then
reads embeddings instead of running the encoder (`data.train_text_embeddings`). A directory
holds, in the layout of muse_jax/data/shards.py,

  metadata.json                         encoder config, dim, max_length, dtype, shard sizes
  embeddings-00000-of-000NN.array_record  one record per caption line, in caption order
  empty_caption.npz                     the "" embedding [max_length, dim] float32 and its mask:
                                        guidance's unconditional input, so no encoder is needed

Each record is a msgpack map (flax.serialization) {caption: str, length: int, embedding:
[length, dim] float16|float32}: only the unpadded tokens are stored, which for T5-XXL
(width 4096, 128 tokens) cuts the size several-fold. The reader pads back to max_length.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import serialization

from muse_jax.data import shards

METADATA = shards.METADATA
EMPTY = "empty_caption.npz"
PREFIX = "embeddings"


def shard_name(index: int, count: int) -> str:
    return shards.shard_name(PREFIX, index, count)


def serialize(caption: str, embedding: np.ndarray, mask: np.ndarray, dtype) -> bytes:
    """One record from a padded embedding [L, D] and its mask [L] (valid tokens come first)."""
    length = int(mask.sum())
    return serialization.msgpack_serialize({
        "caption": caption, "length": length,
        "embedding": np.ascontiguousarray(embedding[:length], dtype=dtype),
    })


def deserialize(record: bytes, max_length: int) -> dict:
    """{"caption", "embedding" [max_length, D] (stored dtype, zero padding), "mask" [max_length] bool}."""
    item = serialization.msgpack_restore(record)
    stored = np.asarray(item["embedding"])
    embedding = np.zeros((max_length, stored.shape[-1]), stored.dtype)
    embedding[: len(stored)] = stored
    mask = np.zeros(max_length, bool)
    mask[: int(item["length"])] = True
    return {"caption": item["caption"], "embedding": embedding, "mask": mask}


class EmbeddingRecords(shards.ShardReader):
    """Random access to a precompute directory: `len()`, `[i]` -> deserialize()'s dict.

    A grain RandomAccessDataSource; see muse_jax/data/shards.py for the reading and pickling.
    """

    def __init__(self, directory: str | Path):
        super().__init__(directory, "embeddings", "muse_jax.text.precompute")
        self.max_length = int(self.metadata["max_length"])
        self.dim = int(self.metadata["dim"])

    def __getitem__(self, index: int) -> dict:
        return deserialize(self.read(index), self.max_length)

    def empty_caption(self) -> tuple[np.ndarray, np.ndarray]:
        """The "" embedding [max_length, dim] float32 and its mask, for unconditional guidance."""
        with np.load(self.directory / EMPTY) as f:
            return f["embedding"], f["mask"]
