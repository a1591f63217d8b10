"""Pixel conversion, and the images and masks that users hand to `muse_jax.sample`, checked.

Models see images as float32 in [-1, 1]; files and the shapes oracle hold uint8.
`to_model` and `to_uint8` are the one conversion between the two.

Everything a user can get wrong here fails with one line naming the file and the numbers:
a missing or unreadable file, more than 8 bits a channel (converting would silently clip),
transparent pixels (what is under them is undefined; mark such regions with a mask instead),
the wrong size (resizing would move the tokens the user means to keep), and masks that are not
black and white or have nothing to regenerate.
"""
from __future__ import annotations

import os

import numpy as np

from muse_jax.errors import UserError

# Grey levels a mask pixel may have and still count as black or white (JPEG ringing).
MASK_TOLERANCE = 16


def to_model(images) -> np.ndarray:
    """uint8 pixels (any shape) -> float32 in [-1, 1]."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
    """Model images in [-1, 1] -> uint8, rounded to nearest and clipped."""
    return np.clip((np.asarray(images, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def psnr(images, targets, peak: float = 255.0):
    """Per-image PSNR in dB of images [B, ...] against targets, numpy or traced jax arrays;
    `peak` is the value range (255 for uint8, 2 for [-1, 1])."""
    import jax.numpy as jnp
    diff = jnp.asarray(images, jnp.float32) - jnp.asarray(targets, jnp.float32)
    mse = jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))
    return 10.0 * jnp.log10(peak ** 2 / jnp.maximum(mse, 1e-10))


class ImageError(UserError):
    """An input image or mask that cannot be used as given."""


def _open(path: str, what: str, size: int):
    """The image, its size checked from the header before any pixel is decoded (a
    20000x20000 file fails in one line, not after gigabytes of decoding)."""
    from PIL import Image, UnidentifiedImageError

    if not path or not os.path.exists(path):
        raise ImageError(f"{what} {path} not found")
    if os.path.isdir(path):
        raise ImageError(f"{what} {path} is a directory, not an image file")
    try:
        image = Image.open(path)
        _check_size(image, path, size)
        image.load()
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what} {path} is too large to open: {e}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{what} {path} is not an image file that PIL can read") from None
    except OSError as e:  # truncated or damaged files
        raise ImageError(f"{what} {path} cannot be read: {e}") from None
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        raise ImageError(f"{what} {path} has {image.mode} pixels (more than 8 bits a channel); "
                         f"save it as 8-bit RGB")
    return image


def _check_size(image, path: str, size: int) -> None:
    if image.size != (size, size):
        raise ImageError(f"{path} is {image.size[0]}x{image.size[1]}; this model works at "
                         f"{size}x{size}")


def load_image(path: str, size: int) -> np.ndarray:
    """An RGB image of `size`x`size` pixels as float32 [size, size, 3] in [-1, 1].

    Greyscale, palette and CMYK images are converted; an alpha channel must be fully opaque.
    """
    image = _open(path, "image", size)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        transparent = int(np.sum(alpha < 255))
        if transparent:
            raise ImageError(f"image {path} has {transparent} transparent pixels of "
                             f"{alpha.size}; use an opaque image and mark what to regenerate "
                             f"with --mask")
    return to_model(np.asarray(image.convert("RGB")))


def load_mask(path: str, size: int) -> np.ndarray:
    """A black-and-white mask of `size`x`size` pixels as bool [size, size]: True = regenerate."""
    image = _open(path, "mask", size)
    grey = np.asarray(image.convert("L"))
    white = grey >= 255 - MASK_TOLERANCE
    between = ~white & (grey > MASK_TOLERANCE)
    if between.any():
        raise ImageError(f"mask {path} is not black and white: {int(between.sum())} of "
                         f"{grey.size} pixels are grey (e.g. {int(grey[between][0])}); use black "
                         f"(keep) and white (regenerate) only")
    if not white.any():
        raise ImageError(f"mask {path} is all black: nothing to regenerate (white = regenerate)")
    return white
