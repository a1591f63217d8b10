"""Precomputed records: numbered ArrayRecord shards plus a metadata.json, and their readers.

The one place for the shard layout, its writer and its readers, and for the two precomputed
inputs a base run can read instead of running a frozen model: caption embeddings
(`EmbeddingRecords`, written by `python -m muse_jax.text.precompute` through
muse_jax/text/embeddings.py) and image tokens (`TokenRecords`, written by `python -m
muse_jax.data.precompute_tokens` through muse_jax/data/tokens.py). Converted images
(muse_jax/data/image_records.py) use the same layout. Records are written once, in example
order, and read back by example index, so record i always belongs to example i of the split
they came from. A directory holds

  metadata.json                           what wrote it, plus `num_records` and `shards`
                                          ([{file, records}], in order); written last, so a
                                          directory without it is an interrupted run
  PREFIX-00000-of-000NN.array_record      `shard_size` records a file, one record a chunk

What a record holds (bytes, usually a flax msgpack map) is up to the writer. Shards may hold
different numbers of records (converted images: muse_jax/data/convert.py writes whatever
survived of each input shard). Readers take local paths or `gs://...` (etils.epath for the
metadata, array_record's own file layer for the shards).

Caption embeddings (prefix `embeddings`): each record is a msgpack map (flax.serialization)
{caption: str, length: int, embedding: [length, dim] float16|float32}: only the unpadded
tokens are stored, which for T5-XXL (width 4096, 128 tokens) cuts the size several-fold; the
reader pads back to max_length. metadata.json adds the encoder config, dim, max_length and
embedding_dtype, and `empty_caption.npz` holds the "" embedding [max_length, dim] float32 and
its mask: guidance's unconditional input, so no encoder is needed.

Image tokens (prefix `tokens`): each record is a msgpack map {caption: str, tokens: [grid,
grid] uint16, or int32 for codebooks over 65536}; the caption lets training check that record
i still belongs to example i. metadata.json adds grid_size, codebook_size, image_size,
tokenizer_workdir, source, split and tokens_dtype.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from muse_jax.errors import UserError

METADATA = "metadata.json"
EMBEDDINGS = "embeddings"  # shard prefix of caption embeddings
EMPTY_CAPTION = "empty_caption.npz"  # beside them: the "" embedding and its mask
TOKENS = "tokens"  # shard prefix of image tokens
# One record per chunk so a random read decodes one record.
WRITE_OPTIONS = "group_size:1"


def shard_name(prefix: str, index: int, count: int) -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}.array_record"


def prepare_out(out: Path, prefix: str, what: str, overwrite: bool, extra: tuple[str, ...] = ()) -> None:
    """Creates `out`; refuses (or with `overwrite` deletes) shards, metadata and `extra` files there."""
    existing = sorted(out.glob(f"{prefix}-*.array_record")) + [
        p for p in (out / METADATA, *(out / e for e in extra)) if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{out} already holds {what} ({existing[0].name}, ...); "
                        "pass --overwrite to replace them")
    for p in existing:
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)


class ShardWriter:
    """Writes `num_records` records in order, `shard_size` a shard; `close(metadata)` ends it."""

    def __init__(self, out: Path, prefix: str, num_records: int, shard_size: int):
        if shard_size < 1:
            raise UserError(f"--shard_size must be >= 1, got {shard_size}")
        if num_records < 1:
            raise UserError("no records to write")
        self.out, self.shard_size, self.num_records = Path(out), shard_size, num_records
        count = math.ceil(num_records / shard_size)
        self.shards = [{"file": shard_name(prefix, i, count),
                        "records": min(shard_size, num_records - i * shard_size)} for i in range(count)]
        self._writer, self._written = None, 0

    def write(self, record: bytes) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        if self._written % self.shard_size == 0:
            if self._writer is not None:
                self._writer.close()
            name = self.shards[self._written // self.shard_size]["file"]
            self._writer = ArrayRecordWriter(str(self.out / name), WRITE_OPTIONS)
        self._writer.write(record)
        self._written += 1

    def close(self, metadata: dict) -> None:
        """Closes the last shard and writes metadata.json (with `num_records` and `shards`)."""
        if self._writer is not None:
            self._writer.close()
        if self._written != self.num_records:
            raise RuntimeError(f"wrote {self._written} records, expected {self.num_records}")
        write_metadata(self.out, metadata, self.shards)


def write_records(path: Path, records) -> int:
    """Writes one shard at `path` atomically (a .tmp file renamed at the end); returns the count."""
    from array_record.python.array_record_module import ArrayRecordWriter

    tmp = path.with_name(path.name + ".tmp")
    writer, count = ArrayRecordWriter(str(tmp), WRITE_OPTIONS), 0
    for record in records:
        writer.write(record)
        count += 1
    writer.close()
    tmp.replace(path)
    return count


def write_metadata(out: Path, metadata: dict, shards: list[dict]) -> None:
    """metadata.json: `metadata` plus `num_records` and `shards` ([{file, records}], in order)."""
    full = {**metadata, "num_records": sum(s["records"] for s in shards), "shards": shards}
    (Path(out) / METADATA).write_text(json.dumps(full, indent=2) + "\n")


class ShardReader:
    """Random access by global index: `len()`, `read(i) -> bytes`, `metadata`.

    Satisfies what grain needs of a source once a subclass adds `__getitem__`. Readers open
    lazily and are not pickled, so grain's worker processes each open their own.
    """

    def __init__(self, directory: str | Path, what: str, tool: str):
        from etils import epath

        self.directory = epath.Path(directory)  # keeps the gs:// of a bucket path
        path = self.directory / METADATA
        if not path.is_file():
            raise UserError(f"{directory} holds no precomputed {what} (no {METADATA}); "
                            f"write them with `python -m {tool}`")
        self.metadata = json.loads(path.read_text())
        # "file[0:n]" tells array_record the count, so no shard is opened until it is read.
        shards = [s for s in self.metadata["shards"] if s["records"]]
        self._paths = [f"{self.directory / s['file']}[0:{s['records']}]" for s in shards]
        self._len = sum(s["records"] for s in shards)
        self._source = None

    def __len__(self) -> int:
        return self._len

    def read(self, index: int) -> bytes:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        return self._opened()[index]

    def read_many(self, indices) -> list[bytes]:
        """The records at `indices` (each in range), in one call: a training batch's records
        without a Python call each."""
        return self._opened().__getitems__([int(i) for i in indices])

    def _opened(self):
        if self._source is None:
            from array_record.python.array_record_data_source import ArrayRecordDataSource
            self._source = ArrayRecordDataSource(self._paths, {"max_parallelism": "0"})
        return self._source

    def close(self) -> None:
        if self._source is not None:
            self._source.__exit__(None, None, None)
            self._source = None

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r}, {len(self)} records)"


# ---------------------------------------------------------------------- caption embeddings
def serialize_embedding(caption: str, embedding: np.ndarray, mask: np.ndarray, dtype) -> bytes:
    """One record from a padded embedding [L, D] and its mask [L] (valid tokens come first)."""
    from flax import serialization

    length = int(mask.sum())
    return serialization.msgpack_serialize({
        "caption": caption, "length": length,
        "embedding": np.ascontiguousarray(embedding[:length], dtype=dtype),
    })


def deserialize_embedding(record: bytes, max_length: int) -> dict:
    """{"caption", "embedding" [max_length, D] (stored dtype, zero padding), "mask" [max_length] bool}."""
    from flax import serialization

    item = serialization.msgpack_restore(record)
    stored = np.asarray(item["embedding"])
    embedding = np.zeros((max_length, stored.shape[-1]), stored.dtype)
    embedding[: len(stored)] = stored
    mask = np.zeros(max_length, bool)
    mask[: int(item["length"])] = True
    return {"caption": item["caption"], "embedding": embedding, "mask": mask}


class EmbeddingRecords(ShardReader):
    """Random access to precomputed caption embeddings: `len()`, `[i]` -> deserialize_embedding().

    A grain RandomAccessDataSource (see ShardReader for the reading and pickling).
    """

    def __init__(self, directory: str | Path):
        super().__init__(directory, "embeddings", "muse_jax.text.precompute")
        self.max_length = int(self.metadata["max_length"])
        self.dim = int(self.metadata["dim"])

    def __getitem__(self, index: int) -> dict:
        return deserialize_embedding(self.read(index), self.max_length)

    def __getitems__(self, indices) -> list[dict]:
        return [deserialize_embedding(r, self.max_length) for r in self.read_many(indices)]

    def empty_caption(self) -> tuple[np.ndarray, np.ndarray]:
        """The "" embedding [max_length, dim] float32 and its mask, for unconditional guidance."""
        with np.load(self.directory / EMPTY_CAPTION) as f:
            return f["embedding"], f["mask"]


# ---------------------------------------------------------------------- image tokens
def serialize_tokens(caption: str, tokens: np.ndarray) -> bytes:
    """One record from an image's caption and its token grid [h, w] (stored dtype as given)."""
    from flax import serialization

    return serialization.msgpack_serialize({"caption": str(caption), "tokens": tokens})


class TokenRecords(ShardReader):
    """Random access to precomputed image tokens: `[i]` -> {"caption", "tokens" [h, w]}."""

    def __init__(self, directory: str | Path):
        super().__init__(directory, "image tokens", "muse_jax.data.precompute_tokens")
        self.grid_size = int(self.metadata["grid_size"])
        self.codebook_size = int(self.metadata["codebook_size"])

    def __getitem__(self, index: int) -> dict:
        return self._restored(self.read(index))

    def __getitems__(self, indices) -> list[dict]:
        return [self._restored(r) for r in self.read_many(indices)]

    @staticmethod
    def _restored(record: bytes) -> dict:
        from flax import serialization

        item = serialization.msgpack_restore(record)
        return {"caption": item["caption"], "tokens": np.asarray(item["tokens"])}
