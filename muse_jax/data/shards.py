"""Numbered ArrayRecord shards plus a metadata.json: the layout of every precomputed input.

Caption embeddings (muse_jax/text/records.py) and image tokens
(muse_jax/data/precompute_tokens.py) are written once, in example order, and read back by
example index, so record i always belongs to example i of the split they came from. A
directory holds

  metadata.json                           what wrote it, plus `num_records` and `shards`
                                          ([{file, records}], in order); written last, so a
                                          directory without it is an interrupted run
  PREFIX-00000-of-000NN.array_record      `shard_size` records a file, one record a chunk

What a record holds (bytes, usually a flax msgpack map) is up to the writer.
"""
from __future__ import annotations

import bisect
import json
import math
from pathlib import Path

import numpy as np

from muse_jax.errors import UserError

METADATA = "metadata.json"
# Random access: no read-ahead; one record per chunk so a read decodes one record.
READ_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
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
        full = {**metadata, "num_records": self.num_records, "shards": self.shards}
        (self.out / METADATA).write_text(json.dumps(full, indent=2) + "\n")


class ShardReader:
    """Random access by global index: `len()`, `read(i) -> bytes`, `metadata`.

    Satisfies what grain needs of a source once a subclass adds `__getitem__`. Readers open
    lazily and are not pickled, so grain's worker processes each open their own.
    """

    def __init__(self, directory: str | Path, what: str, tool: str):
        self.directory = Path(directory)
        path = self.directory / METADATA
        if not path.is_file():
            raise UserError(f"{self.directory} holds no precomputed {what} (no {METADATA}); "
                            f"write them with `python -m {tool}`")
        self.metadata = json.loads(path.read_text())
        self._shards = [self.directory / s["file"] for s in self.metadata["shards"]]
        self._starts = np.cumsum([0] + [s["records"] for s in self.metadata["shards"]]).tolist()
        self._readers: dict[int, object] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def read(self, index: int) -> bytes:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        shard = bisect.bisect_right(self._starts, index) - 1
        return self._reader(shard).read([index - self._starts[shard]])[0]

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
        return f"{type(self).__name__}({str(self.directory)!r}, {len(self)} records)"
