"""LPIPS-style perceptual distance on VGG16 features (Zhang et al., arXiv 1801.03924).

Nothing is downloaded: the weights come from one local safetensors file holding the
torchvision VGG16 convolutions and the LPIPS linear heads under their PyTorch names:

  features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}   conv kernels [O,I,3,3]
  lin{0..4}.model.1.weight                                       LPIPS heads [1,C,1,1]

(`torchvision.models.vgg16(weights=...).state_dict()` merged with the LPIPS `vgg.pth` heads,
saved with `safetensors.torch.save_file`.) With no file configured the loss is off.
"""
from __future__ import annotations

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


def load_weights(path: str) -> dict[str, jnp.ndarray]:
    """Reads and converts the weights file; one-line errors for a missing or partial file."""
    from safetensors.numpy import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"perceptual weights file {path!r} not found: expected a safetensors file with "
            f"VGG16 'features.N.weight/bias' and LPIPS 'linK.model.1.weight' tensors")
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
