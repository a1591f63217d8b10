"""Batch-by-batch progress of a long evaluation, saved so that a stopped run resumes.

A 30k-sample FID run takes hours; each finished batch is recorded in an output directory
(local or gs://): `state.json` (settings, the next batch, running sums of the scalar metrics)
one `NAME-BATCH.npz` of `frechet.FeatureStats` a feature set, and `arrays-BATCH.npz` of
running array sums (code counts). The stats files are written
first, under the batch number they include, and `state.json`, written last through a rename,
names that number, so a run killed at any point resumes from a consistent state with nothing
counted twice. Batches are deterministic in their index (prompts, seeds, reference images), so
a resumed run ends with the result of an uninterrupted one. A directory holding a run with
other settings is refused rather than mixed in.

In a multi-process run process 0 alone reads and writes the directory, so no two processes
write one file and the others need not see it (a host-local --output works): what it reads,
including a refusal, is broadcast to the others, so every process resumes at the same batch
with the same sums. (Every process accumulates the same sums: sharded.py.)
"""
from __future__ import annotations

import io
import json

import jax
import numpy as np
from etils import epath

from muse_jax.errors import UserError
from muse_jax.quality.frechet import FeatureStats


class BatchProgress:
    def __init__(self, out_dir: str, settings: dict, stats_dims: dict[str, int],
                 arrays: dict[str, np.ndarray] | None = None):
        self.dir = epath.Path(out_dir)
        self.settings = json.loads(json.dumps(settings))
        self.next_batch = 0
        self.sums: dict[str, float] = {}
        self.stats = {name: FeatureStats(dim) for name, dim in stats_dims.items()}
        self.arrays = dict(arrays or {})
        if jax.process_count() == 1:
            self._read()
        else:
            self._receive_from_process_0()

    def _read(self) -> None:
        """Loads the recorded batches, if any, refusing a run of other settings."""
        state_file = self.dir / "state.json"
        if not state_file.exists():
            return
        state = json.loads(state_file.read_text())
        if state["settings"] != self.settings:
            changed = sorted(k for k in set(state["settings"]) | set(self.settings)
                             if state["settings"].get(k) != self.settings.get(k))
            raise UserError(f"{self.dir} holds an evaluation with other settings "
                            f"({', '.join(changed)}): use another --output or delete it")
        self.next_batch, self.sums = state["next_batch"], state["sums"]
        for name in self.stats:
            self.stats[name] = FeatureStats.load(self.dir / f"{name}-{self.next_batch}.npz")
        if self.arrays:
            with (self.dir / f"arrays-{self.next_batch}.npz").open("rb") as f:
                saved = np.load(f)
                self.arrays = {name: saved[name].copy() for name in self.arrays}

    def _receive_from_process_0(self) -> None:
        """Process 0 `_read`s; every process gets its next batch, sums, stats and arrays (or
        its refusal, raised everywhere rather than leaving the others waiting for it)."""
        source, error = jax.process_index() == 0, ""
        if source:
            try:
                self._read()
            except UserError as e:
                error = str(e)
        meta = json.loads(_broadcast_bytes(json.dumps(
            {"next_batch": self.next_batch, "sums": self.sums, "error": error}).encode()
            if source else None))
        if meta["error"]:
            raise UserError(meta["error"])
        self.next_batch, self.sums = meta["next_batch"], meta["sums"]
        if not self.next_batch:
            return
        buffer = io.BytesIO()
        if source:
            np.savez(buffer, **{f"{name}.{part}": getattr(stats, part)
                                for name, stats in self.stats.items()
                                for part in ("count", "total", "outer")}, **self.arrays)
        with np.load(io.BytesIO(_broadcast_bytes(buffer.getvalue() if source else None))) as saved:
            self.stats = {name: FeatureStats(dim=stats.dim, count=int(saved[f"{name}.count"]),
                                             total=saved[f"{name}.total"].copy(),
                                             outer=saved[f"{name}.outer"].copy())
                          for name, stats in self.stats.items()}
            self.arrays = {name: saved[name].copy() for name in self.arrays}

    @property
    def resumed(self) -> bool:
        return self.next_batch > 0

    def add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value)

    def commit(self, next_batch: int) -> None:
        """Records that every batch before `next_batch` is counted (process 0 writes)."""
        previous, self.next_batch = self.next_batch, next_batch
        if jax.process_index() != 0:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, stats in self.stats.items():
            stats.save(self.dir / f"{name}-{next_batch}.npz")
        if self.arrays:
            with (self.dir / f"arrays-{next_batch}.npz").open("wb") as f:
                np.savez(f, **self.arrays)
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps({"settings": self.settings, "next_batch": next_batch,
                                   "sums": self.sums}, indent=1))
        tmp.replace(self.dir / "state.json")  # atomic on local disks (a POSIX rename)
        for name in [*self.stats, *(["arrays"] if self.arrays else [])]:
            old = self.dir / f"{name}-{previous}.npz"
            if previous != next_batch and old.exists():
                old.unlink()


def _broadcast_bytes(data: bytes | None) -> bytes:
    """Process 0's `data` on every process (the others pass None), as raw bytes: a float64
    array would go through JAX's default float32."""
    from jax.experimental import multihost_utils

    source = jax.process_index() == 0
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data) if source else 0)))
    if not size:
        return b""
    buffer = np.frombuffer(data, np.uint8) if source else np.zeros(size, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8).tobytes()
