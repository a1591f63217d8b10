"""Turning untrusted image bytes and caption text into RGB uint8 arrays and clean strings.

Scraped image-text collections hold every kind of file: truncated downloads, CMYK JPEGs,
16-bit or grayscale PNGs, images with alpha, 1x1 tracking pixels, decompression bombs,
captions in cp1252. Conversion (convert.py) and the training sources both go through these
functions, so an image is repaired (converted to 8-bit RGB) or skipped for the same reason in
both, and every outcome carries a short reason that the caller counts. Nothing here raises on
bad data: a job must never die on one bad file.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# Pillow refuses (DecompressionBombError) above twice its limit, about 179M pixels; between
# one and two times it only warns. An image over MAX_PIXELS is skipped unless a JPEG can be
# decoded at a reduced scale (draft) that fits.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS

# Skip reasons (counted by callers).
NOT_AN_IMAGE = "not an image"
CORRUPT = "corrupt or truncated image"
BOMB = "too many pixels (decompression bomb?)"
EMPTY_FILE = "empty file"

# Formats whose repaired images are re-encoded as PNG (others as JPEG).
LOSSLESS_FORMATS = ("PNG", "BMP", "TIFF", "GIF", "PPM")  # re-encoded as PNG when repaired


def decode_image(data: bytes, min_side: int = 0, max_pixels: int = MAX_PIXELS):
    """(RGB uint8 HWC array or None, note, source format) from encoded bytes.

    `note` is "" for an 8-bit RGB image used as it was, the repair made ("grayscale -> RGB",
    ...) when it was converted, or the reason it was skipped when the array is None.
    `min_side` > 0 lets a JPEG decode at a reduced scale (1/2 to 1/8, Pillow's draft) as long as
    the shorter side stays at least that large; the result is the same picture, sooner.
    """
    if not data:
        return None, EMPTY_FILE, ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format or ""
            note = ""
            huge = im.width * im.height > max_pixels
            if fmt == "JPEG" and (huge or min_side):
                # draft keeps both sides at least as large as requested.
                target = max(min_side, _side_within(im.size, max_pixels)) if huge else min_side
                im.draft("RGB", (target, target))
            if im.width * im.height > max_pixels:
                return None, BOMB, fmt
            if huge:
                note = "huge JPEG decoded at reduced scale"
            im.load()
            im = ImageOps.exif_transpose(im)
    except Image.DecompressionBombError:
        return None, BOMB, ""
    except Image.UnidentifiedImageError:
        return None, NOT_AN_IMAGE, ""
    except Exception:  # noqa: BLE001  Pillow raises OSError, ValueError, SyntaxError, zlib.error...
        return None, CORRUPT, ""
    try:
        rgb, repair = to_rgb8(im)
    except Exception:  # noqa: BLE001  a mode Pillow opened but cannot convert
        return None, CORRUPT, fmt
    return rgb, note or repair, fmt


def _side_within(size: tuple[int, int], max_pixels: int) -> int:
    """The shorter side of `size` scaled down to fit in `max_pixels` (never below 1)."""
    w, h = size
    scale = min(1.0, (max_pixels / (w * h)) ** 0.5)
    return max(1, int(min(w, h) * scale))


def to_rgb8(im: Image.Image) -> tuple[np.ndarray, str]:
    """An 8-bit RGB array of any Pillow image, and the repair it took ("" for RGB already)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im), ""
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        # 16-bit data fills 0..65535; 32-bit "I"/"F" data is taken as 16-bit if it exceeds 255.
        top = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1), f"{mode} (high bit depth) -> 8-bit RGB"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB")), "alpha composited on white"
    if mode in ("L", "1"):
        return np.asarray(im.convert("RGB")), "grayscale -> RGB"
    return np.asarray(im.convert("RGB")), f"{mode} -> RGB"


def clean_caption(raw: bytes | str) -> tuple[str, str]:
    """(caption, repair note): bytes decoded as UTF-8, else cp1252, else Latin-1; stripped.

    Control characters other than whitespace are dropped. The note is "" when nothing needed
    doing, "empty caption" when nothing is left (the image is kept: an empty caption is what
    conditioning dropout trains on anyway).
    """
    note = ""
    if isinstance(raw, bytes):
        for encoding in ("utf-8", "cp1252", "latin-1"):
            try:
                text = raw.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
        if encoding != "utf-8":
            note = f"non-UTF-8 caption read as {encoding}"
    else:
        text = raw
        if any(0xDC80 <= ord(c) <= 0xDCFF for c in text):  # undecodable bytes (surrogateescape)
            return clean_caption(text.encode("utf-8", "surrogateescape"))
    text = "".join(c for c in text if c.isprintable() or c in " \t\n").strip()
    if not text:
        return "", "empty caption"
    return text, note


def clean_captions(raws) -> tuple[list[str], list[str]]:
    """Every non-empty caption of `raws` (at least one, possibly ""), and their repair notes."""
    captions, notes = [], []
    for raw in raws:
        text, note = clean_caption(raw)
        if text:
            captions.append(text)
        if note and note != "empty caption":
            notes.append(note)
    if not captions:
        return [""], notes + ["empty caption"]
    return captions, notes
