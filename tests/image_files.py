"""Builds the image files that real collections hold, good and bad, for the data tests.

`write_zoo(dir)` writes one file of each kind with a same-name .txt caption and returns what
conversion must do with each: "ok", "repaired" or "skipped".
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture (JPEG-friendly) that differs by seed."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.05, 0.3, 3)
    img = np.stack([np.sin(a * x + seed), np.cos(b * y), np.sin(c * (x + y))], -1)
    return ((img + 1) * 127.5).astype(np.uint8)


def encode(image: Image.Image | np.ndarray, fmt: str, **kw) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_rgb16(h: int, w: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    rows = np.arange(h * w * 3, dtype=">u2").reshape(h, w * 3) * 300
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def png_bomb(side: int = 60_000) -> bytes:
    """A few hundred bytes that declare a side x side image (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * (side + 1) * 4)) + _chunk(b"IEND", b""))


def zoo() -> dict[str, tuple[bytes, bytes, str]]:
    """{file name: (image bytes, caption bytes, expected outcome)}."""
    jpeg = encode(photo(40, 56, 1), "JPEG", quality=90)
    rgba = np.dstack([photo(36, 36, 5), np.full((36, 36), 128, np.uint8)])
    palette = Image.fromarray(photo(32, 40, 6)).convert("P")
    palette.info["transparency"] = 0
    return {
        "good.jpg": (jpeg, b"a red square left of a circle", "ok"),
        "good.png": (encode(photo(48, 40, 2), "PNG"), b"first caption\nsecond caption\n", "ok"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], b"cut short", "skipped"),
        "truncated.png": (encode(photo(40, 40, 3), "PNG")[:300], b"cut short", "skipped"),
        "garbage.png": (bytes(np.random.default_rng(0).integers(0, 256, 500, np.uint8)), b"x", "skipped"),
        "empty.jpg": (b"", b"nothing", "skipped"),
        "cmyk.jpg": (encode(Image.fromarray(photo(40, 48, 4)).convert("CMYK"), "JPEG"), b"cmyk", "repaired"),
        "gray.png": (encode(photo(40, 40, 7)[..., 0], "PNG"), b"gray", "repaired"),
        "gray16.png": (encode((photo(40, 40, 8)[..., 0].astype(np.uint16) * 257), "PNG"), b"16-bit", "repaired"),
        "rgb16.png": (png_rgb16(40, 44), b"16-bit rgb", "ok"),  # Pillow reads it as 8-bit RGB
        "alpha.png": (encode(rgba, "PNG"), b"alpha", "repaired"),
        "palette_alpha.png": (encode(palette, "PNG"), b"palette", "repaired"),
        "one_pixel.png": (encode(photo(1, 1), "PNG"), b"tracking pixel", "skipped"),
        "bomb.png": (png_bomb(), b"bomb", "skipped"),
        "empty_caption.jpg": (encode(photo(40, 40, 9), "JPEG"), b"  \n", "ok"),
        "cp1252_caption.jpg": (encode(photo(40, 40, 10), "JPEG"), "café crème".encode("cp1252"), "repaired"),
    }


def write_zoo(directory: Path) -> dict[str, str]:
    """Writes zoo() as files plus .txt captions; returns {file name: expected outcome}."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, (data, caption, _) in zoo().items():
        (directory / name).write_bytes(data)
        (directory / name).with_suffix(".txt").write_bytes(caption)
    return {name: outcome for name, (_, _, outcome) in zoo().items()}
