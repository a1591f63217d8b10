"""Metric writers (TensorBoard, log, metrics.jsonl) and image grids for summaries.

clu's writers are imported by `create_writer` alone: `clu.metric_writers` imports TensorFlow for
its TensorBoard writer, 5.4 of the 10 s that `train` took to reject a bad config on a 2-core CPU
(`python -X importtime`, 2026-12-02), and `sample` / `evaluate`, which read this module through
the tasks, never write TensorBoard events.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from etils import epath
from PIL import Image

from muse_jax.images import to_uint8


class JsonlWriter:
    """Appends scalars as one JSON object a line to `<workdir>/metrics.jsonl`, for scripts.

    clu's `MetricWriter` interface, method for method; not its subclass, which would import
    TensorFlow with this module."""

    def __init__(self, path: str):
        self._file = epath.Path(path).open("a")  # a gs:// file is rewritten at each flush

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # so that `tail -f` and scripts see each logged step as it happens

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


def create_writer(workdir: str):
    """TensorBoard + logging on process 0 (logging only elsewhere), plus metrics.jsonl: a clu
    `MetricWriter`."""
    from clu import metric_writers
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if jax.process_index() > 0:
        return writer
    return metric_writers.MultiWriter([writer, JsonlWriter(os.path.join(workdir, "metrics.jsonl"))])


def read_jsonl(path: str) -> dict[int, dict[str, float]]:
    """Step -> scalars; for a step logged twice (a resumed run) the last record wins."""
    records: dict[int, dict[str, float]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                records.setdefault(record["step"], {}).update(record)
    return records


def image_grid(*rows: np.ndarray, columns: int = 8) -> np.ndarray:
    """uint8 [H', W', 3] grid; each row argument is a batch [N,H,W,3] in [-1, 1] (first `columns`)."""
    strips = []
    for batch in rows:
        batch = np.asarray(batch[:columns], np.float32)
        strips.append(np.concatenate(list(batch), axis=1))
    return to_uint8(np.concatenate(strips, axis=0))


def save_png(path: str, grid: np.ndarray) -> None:
    """Writes atomically where the file system can (locally); to gs:// in one upload."""
    if "://" in path:
        with epath.Path(path).open("wb") as f:
            Image.fromarray(grid).save(f, format="PNG")
        return
    tmp = path + ".tmp.png"
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)
