"""User images and masks for editing: what loads, and the one-line errors for what cannot."""
import numpy as np
import pytest
from PIL import Image

from muse_jax import images


def test_modes_are_converted(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(np.dstack([rgb, np.full((8, 8), 255, np.uint8)])).save(tmp_path / "opaque.png")
    loaded = images.load_image(str(tmp_path / "rgb.png"), 8)
    assert loaded.dtype == np.float32 and loaded.shape == (8, 8, 3)
    np.testing.assert_allclose(loaded, rgb / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(images.load_image(str(tmp_path / "opaque.png"), 8), loaded)
    for name in ("grey.png", "palette.png"):
        assert images.load_image(str(tmp_path / name), 8).shape == (8, 8, 3)


def test_masks_load_as_white_is_regenerate(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:6] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(mask).convert("1").save(tmp_path / "bits.png")
    Image.fromarray(np.dstack([mask] * 3)).save(tmp_path / "rgb.png")
    noisy = mask.copy()
    noisy[0, 0], noisy[3, 4] = 9, 250  # JPEG-like ringing stays black and white
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    for name in ("mask.png", "bits.png", "rgb.png", "noisy.png"):
        np.testing.assert_array_equal(images.load_mask(str(tmp_path / name), 8), mask == 255)


def _save(path, array, mode=None):
    Image.fromarray(array, mode).save(path)
    return str(path)


BAD = {
    "missing file": (lambda d: str(d / "nope.png"), "image", "image {d}/nope.png not found"),
    "a directory": (lambda d: str(d), "image", "is a directory, not an image file"),
    "not an image": (lambda d: (d / "x.png").write_text("hello") and str(d / "x.png"), "image",
                     "is not an image file that PIL can read"),
    "truncated": (lambda d: (d / "t.png").write_bytes(open(_save(
        d / "full.png", np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)),
        "rb").read()[:130]) and str(d / "t.png"), "image", "cannot be read: image file is truncated"),
    "16-bit": (lambda d: _save(d / "i16.png", np.zeros((8, 8), np.uint16)), "image",
               "has I;16 pixels (more than 8 bits a channel); save it as 8-bit RGB"),
    "wrong size": (lambda d: _save(d / "big.png", np.zeros((8, 16, 3), np.uint8)), "image",
                   "big.png is 16x8; this model works at 8x8"),
    "transparent": (lambda d: _save(d / "rgba.png", np.zeros((8, 8, 4), np.uint8)), "image",
                    "has 64 transparent pixels of 64; use an opaque image"),
    "grey mask": (lambda d: _save(d / "grey.png", np.full((8, 8), 128, np.uint8)), "mask",
                  "is not black and white: 64 of 64 pixels are grey (e.g. 128)"),
    "coloured mask": (lambda d: _save(d / "red.png", np.dstack([np.full((8, 8), 255, np.uint8)] +
                                                                [np.zeros((8, 8), np.uint8)] * 2)),
                      "mask", "is not black and white"),
    "all-black mask": (lambda d: _save(d / "black.png", np.zeros((8, 8), np.uint8)), "mask",
                       "is all black: nothing to regenerate (white = regenerate)"),
    "mask size": (lambda d: _save(d / "small.png", np.zeros((4, 4), np.uint8)), "mask",
                  "small.png is 4x4; this model works at 8x8"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_images_and_masks_fail_in_one_line(case, tmp_path):
    make, kind, message = BAD[case]
    path = make(tmp_path)
    load = images.load_image if kind == "image" else images.load_mask
    with pytest.raises(images.ImageError) as error:
        load(path, 8)
    assert message.format(d=tmp_path) in str(error.value)
    assert "\n" not in str(error.value)


def _png_header_only(path, width, height):
    """A PNG whose header claims `width`x`height` and holds (almost) no pixels: opening it
    must not decode (or allocate) what the header promises."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b""))


def test_a_huge_image_fails_from_its_header_before_any_decoding(tmp_path):
    _png_header_only(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(images.ImageError, match=r"image .*huge.png is too large to open: "
                                                 r"Image size \(400000000 pixels\) exceeds"):
        images.load_image(str(tmp_path / "huge.png"), 64)
    _png_header_only(tmp_path / "big.png", 10000, 10000)  # under PIL's bomb limit
    with pytest.warns(Image.DecompressionBombWarning):
        with pytest.raises(images.ImageError, match=r"big.png is 10000x10000; this model works "
                                                     r"at 64x64"):
            images.load_mask(str(tmp_path / "big.png"), 64)
