"""A PNG image grid written one row of images at a time, so memory never holds the whole grid.

A sampling job of 10,000 prompts makes a grid of gigabytes: built in memory (as
`metrics.image_grid` does) it fails only after every image has been sampled, losing them all.
`GridWriter` knows the grid's size up front, writes the PNG header, then compresses each row
of images into the file as it comes (its scanlines through one zlib stream), so what is held
is one row. The pixels are those `metrics.image_grid` makes of the same images.

The file is written under a temporary name beside the target and renamed once complete
(locally), so an interrupted job never leaves a truncated image under the target's name.
"""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np
from etils import epath

from muse_jax.images import to_uint8

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


class GridWriter:
    """`rows` rows of `columns` images of `height`x`width`; `add_row(batch)` each in order."""

    def __init__(self, path: str, rows: int, columns: int, height: int, width: int):
        self.path, self.rows, self.columns = path, rows, columns
        self.height, self.width = height, width
        self._local = "://" not in path
        self._target = path + ".tmp.png" if self._local else path
        self._file = epath.Path(self._target).open("wb")
        self._zlib = zlib.compressobj(6)
        self._written = 0
        header = struct.pack(">IIBBBBB", columns * width, rows * height, 8, 2, 0, 0, 0)
        self._file.write(_SIGNATURE + _chunk(b"IHDR", header))

    def add_row(self, images: np.ndarray) -> None:
        """One grid row: images [columns, height, width, 3] in [-1, 1]."""
        if self._written >= self.rows:
            raise ValueError(f"the grid has {self.rows} rows already")
        if images.shape != (self.columns, self.height, self.width, 3):
            raise ValueError(f"a grid row is {(self.columns, self.height, self.width, 3)}, "
                             f"got {images.shape}")
        strip = to_uint8(np.concatenate(list(np.asarray(images, np.float32)), axis=1))
        # PNG's "Sub" filter (type 1): each byte minus the one a pixel to its left, mod 256.
        filtered = strip.reshape(self.height, -1).copy()
        filtered[:, 3:] -= strip.reshape(self.height, -1)[:, :-3]
        lines = np.concatenate([np.ones((self.height, 1), np.uint8), filtered], axis=1)
        data = self._zlib.compress(lines.tobytes())
        if data:
            self._file.write(_chunk(b"IDAT", data))
        self._written += 1

    def close(self) -> None:
        """Finishes the file (every row must have been added) and renames it into place."""
        if self._file is None:
            return
        if self._written != self.rows:
            self.abandon()
            raise ValueError(f"the grid got {self._written} of its {self.rows} rows")
        self._file.write(_chunk(b"IDAT", self._zlib.flush()) + _chunk(b"IEND", b""))
        self._file.close()
        self._file = None
        if self._local:
            os.replace(self._target, self.path)

    def abandon(self) -> None:
        """Closes and deletes the partial file (the target is left as it was)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            epath.Path(self._target).unlink(missing_ok=True)
