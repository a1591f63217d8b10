"""Metric writers (TensorBoard, log, metrics.jsonl) and image grids for summaries.

The writers follow clu's `MetricWriter` interface, method for method, but are not clu's:
`clu.metric_writers` (and `clu.periodic_actions`, which imports it) imports TensorFlow for its
TensorBoard writer, 5.6 s of every training process's start on a 2-core CPU (`python -X
importtime`, 2026-12-05; about 70 such processes in the test suite). `TensorBoardWriter` writes
the same event files with the tensorboard package's record format instead, through etils.epath
(local or gs://), and TensorFlow is never imported to train.
"""
from __future__ import annotations

import io
import json
import os
import socket
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from muse_jax.images import to_uint8


class _Writer:
    """The methods of clu's `MetricWriter` that a writer here does not use: no-ops."""

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
        pass

    def close(self):
        pass


class LoggingWriter(_Writer):
    """Scalars into the absl log, one line a step, as clu's LoggingWriter writes them."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        values = ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(scalars.items()))
        logging.info("[%d] %s", step, values)


class TensorBoardWriter(_Writer):
    """Scalars and images as one TensorBoard event file in `logdir`."""

    def __init__(self, logdir: str):
        from tensorboard.summary.writer.record_writer import RecordWriter

        epath.Path(logdir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}"
        self._records = RecordWriter(epath.Path(logdir, name).open("wb"))
        self._write(file_version="brain.Event:2")

    def _write(self, **event):
        from tensorboard.compat.proto import event_pb2

        self._records.write(event_pb2.Event(wall_time=time.time(), **event).SerializeToString())

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        from tensorboard.compat.proto import summary_pb2

        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                  for k, v in scalars.items()]
        self._write(step=int(step), summary=summary_pb2.Summary(value=values))
        self._records.flush()

    def write_images(self, step: int, images: Mapping[str, np.ndarray]):
        """`images`: name -> uint8 [N, H, W, 3]; the first of each batch is written."""
        from tensorboard.compat.proto import summary_pb2

        values = []
        for name, batch in images.items():
            image = np.asarray(batch)[0]
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            values.append(summary_pb2.Summary.Value(tag=name, image=summary_pb2.Summary.Image(
                height=image.shape[0], width=image.shape[1], colorspace=image.shape[2],
                encoded_image_string=png.getvalue())))
        self._write(step=int(step), summary=summary_pb2.Summary(value=values))
        self._records.flush()

    def flush(self):
        self._records.flush()

    def close(self):
        self._records.close()


class MultiWriter(_Writer):
    """Scalars, images, flush and close to each of `writers`."""

    def __init__(self, writers):
        self._writers = list(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        for w in self._writers:
            w.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]):
        for w in self._writers:
            w.write_images(step, images)

    def flush(self):
        for w in self._writers:
            w.flush()

    def close(self):
        for w in self._writers:
            w.close()


class JsonlWriter(_Writer):
    """Appends scalars as one JSON object a line to `<workdir>/metrics.jsonl`, for scripts."""

    def __init__(self, path: str):
        self._file = epath.Path(path).open("a")  # a gs:// file is rewritten at each flush

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # so that `tail -f` and scripts see each logged step as it happens

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


def create_writer(workdir: str) -> MultiWriter:
    """The log on every process; TensorBoard events and metrics.jsonl in `workdir` on process
    0 alone."""
    if jax.process_index() > 0:
        return MultiWriter([LoggingWriter()])
    return MultiWriter([LoggingWriter(), TensorBoardWriter(workdir),
                        JsonlWriter(os.path.join(workdir, "metrics.jsonl"))])


class StepRate:
    """Every `every_secs`: steps a second since the last report and the time left, into the log
    and as the scalar `steps_per_sec` (what clu's ReportProgress reported)."""

    def __init__(self, num_steps: int, writer, every_secs: float):
        self._num_steps, self._writer, self._every = num_steps, writer, every_secs
        self._last_step = self._last_time = None  # set by the first step

    def __call__(self, step: int) -> None:
        now = time.monotonic()
        if self._last_step is None:  # the first step: compiling, not a rate
            self._last_step, self._last_time = step, now
            return
        if now - self._last_time < self._every:
            return
        rate = (step - self._last_step) / (now - self._last_time)
        left = (self._num_steps - step) / rate if rate > 0 else float("inf")
        logging.info("step %d of %d (%.1f %%): %.3g steps/s, %.0f min left", step,
                     self._num_steps, 100 * step / self._num_steps, rate, left / 60)
        self._writer.write_scalars(step, {"steps_per_sec": rate})
        self._last_step, self._last_time = step, now


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
