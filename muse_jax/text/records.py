"""Precomputed caption embeddings in ArrayRecord shards, and a random-access reader for them.

At paper scale T5-XXL costs more per step than it is worth to rerun on captions that never
change, so `python -m muse_jax.text.precompute` encodes them once; the data pipeline then
reads embeddings instead of running the encoder. A directory holds

  metadata.json                         encoder config, dim, max_length, dtype, shard sizes
  embeddings-00000-of-000NN.array_record  one record per caption line, in caption order
  empty_caption.npz                     the "" embedding [max_length, dim] float32 and its mask:
                                        guidance's unconditional input, so no encoder is needed

Each record is a msgpack map (flax.serialization) {caption: str, length: int, embedding:
[length, dim] float16|float32}: only the unpadded tokens are stored, which for T5-XXL
(width 4096, 128 tokens) cuts the size several-fold. The reader pads back to max_length.
"""
from __future__ import annotations

import bisect
import json
from pathlib import Path

import numpy as np
from flax import serialization

from muse_jax.errors import UserError

METADATA = "metadata.json"
EMPTY = "empty_caption.npz"
# Random access: no read-ahead; one record per chunk so a read decodes one record.
READ_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
WRITE_OPTIONS = "group_size:1"


def shard_name(index: int, count: int) -> str:
    return f"embeddings-{index:05d}-of-{count:05d}.array_record"


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


class EmbeddingRecords:
    """Random access to a precompute directory: `len()`, `[i]` -> deserialize()'s dict.

    Satisfies grain's RandomAccessDataSource protocol. Readers open lazily and are not
    pickled, so grain's worker processes each open their own.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        path = self.directory / METADATA
        if not path.is_file():
            raise UserError(f"{self.directory} holds no precomputed embeddings (no {METADATA}); "
                            "write them with `python -m muse_jax.text.precompute`")
        self.metadata = json.loads(path.read_text())
        self.max_length = int(self.metadata["max_length"])
        self.dim = int(self.metadata["dim"])
        self._shards = [self.directory / s["file"] for s in self.metadata["shards"]]
        self._starts = np.cumsum([0] + [s["records"] for s in self.metadata["shards"]]).tolist()
        self._readers: dict[int, object] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        shard = bisect.bisect_right(self._starts, index) - 1
        record = self._reader(shard).read([index - self._starts[shard]])[0]
        return deserialize(record, self.max_length)

    def empty_caption(self) -> tuple[np.ndarray, np.ndarray]:
        """The "" embedding [max_length, dim] float32 and its mask, for unconditional guidance."""
        with np.load(self.directory / EMPTY) as f:
            return f["embedding"], f["mask"]

    def _reader(self, shard: int):
        if shard not in self._readers:
            from array_record.python.array_record_module import ArrayRecordReader
            self._readers[shard] = ArrayRecordReader(str(self._shards[shard]), READ_OPTIONS)
        return self._readers[shard]

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def __getstate__(self):
        return {**self.__dict__, "_readers": {}}

    def __repr__(self) -> str:
        return f"EmbeddingRecords({str(self.directory)!r}, {len(self)} records)"
