"""Numbered ArrayRecord shards plus a metadata.json: the layout of every precomputed input.

Caption embeddings (muse_jax/text/records.py) and image tokens
(muse_jax/data/precompute_tokens.py) are written once, in example order, and read back by
example index, so record i always belongs to example i of the split they came from. A
directory holds

  metadata.json                           what wrote it, plus `num_records` and `shards`
                                          ([{file, records}], in order); written last, so a
                                          directory without it is an interrupted run
  PREFIX-00000-of-000NN.array_record      `shard_size` records a file, one record a chunk

What a record holds (bytes, usually a flax msgpack map) is up to the writer. Shards may hold
different numbers of records (converted images: muse_jax/data/convert.py writes whatever
survived of each input shard). Readers take local paths or `gs://...` (etils.epath for the
metadata, array_record's own file layer for the shards).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from muse_jax.errors import UserError

METADATA = "metadata.json"
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
        if self._source is None:
            from array_record.python.array_record_data_source import ArrayRecordDataSource
            self._source = ArrayRecordDataSource(self._paths, {"max_parallelism": "0"})
        return self._source[index]

    def close(self) -> None:
        if self._source is not None:
            self._source.__exit__(None, None, None)
            self._source = None

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r}, {len(self)} records)"
