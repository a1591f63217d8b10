"""Inception-v3 pool3 features for FID: the network the community's FID uses, in Flax.

This is pytorch-fid's `InceptionV3` (its `fid_inception_v3`: the TF graph
`inception-2015-12-05` ported to PyTorch), up to the 2048-d global average pool. It differs
from torchvision's Inception-v3 where the TF graph does: the 3x3 average pools of the A, C and
E blocks leave the padding out of the mean (`count_include_pad=False`), and the last E block
pools with a max instead of an average. Every convolution is conv (no bias) + BatchNorm
(eps 1e-3, inference statistics) + ReLU, pytorch-fid's `BasicConv2d`.

Input: images in [-1, 1], NHWC, any size; they are resized to 299x299 bilinearly without
antialiasing (`F.interpolate(..., align_corners=False)`, as pytorch-fid does), so the features
match pytorch-fid's on the same pixels (< 1e-4, tests/test_inception.py).

Weights come from a local file, never downloaded: pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` (a PyTorch state dict, read with
`torch.load(weights_only=True)`, which runs no code), or the same tensors under the same names
in a safetensors file for machines without torch. Parameter names mirror the state dict's
(`Mixed_5b.branch1x1.conv.weight` -> params Mixed_5b/branch1x1/kernel).
"""
from __future__ import annotations

import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FEATURES = 2048
_BN_EPS = 1e-3
_CONV_AXES = (None, None, "conv_in", "conv_out")


class BasicConv(nn.Module):
    """conv (no bias) -> BatchNorm with frozen statistics -> ReLU."""

    features: int
    kernel: Sequence[int]
    strides: int = 1
    padding: Sequence[int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.lecun_normal()
        k = self.param("kernel", nn.with_logical_partitioning(init, _CONV_AXES),
                       (*self.kernel, x.shape[-1], self.features))
        per_channel = lambda name, fn: self.param(  # noqa: E731
            name, nn.with_logical_partitioning(fn, ("conv_out",)), (self.features,))
        scale = per_channel("scale", nn.initializers.ones)
        bias = per_channel("bias", nn.initializers.zeros)
        mean = per_channel("mean", nn.initializers.zeros)
        var = per_channel("var", nn.initializers.ones)
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(x, k, (self.strides,) * 2, ((ph, ph), (pw, pw)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = (y - mean) * (scale * jax.lax.rsqrt(var + _BN_EPS)) + bias
        return nn.relu(y)


def _max_pool(x, stride, padding=0):
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad)


def _avg_pool_no_pad(x):
    """3x3 stride-1 average over the window's pixels inside the image (TF's, not torch's)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    window = lambda v: jax.lax.reduce_window(v, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)  # noqa: E731
    counts = window(jnp.ones((1, *x.shape[1:3], 1), x.dtype))
    return window(x) / counts


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_no_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c, **row, name="branch7x7_2")(b7)
        b7 = BasicConv(192, **col, name="branch7x7_3")(b7)
        bd = BasicConv(c, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c, **col, name="branch7x7dbl_2")(bd)
        bd = BasicConv(c, **row, name="branch7x7dbl_3")(bd)
        bd = BasicConv(c, **col, name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, **row, name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_no_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):
    max_pool: bool  # the FID graph's last block (Mixed_7c) max-pools its pool branch

    @nn.compact
    def __call__(self, x):
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, **row, name="branch3x3_2a")(b3),
                              BasicConv(384, **col, name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, **row, name="branch3x3dbl_3a")(bd),
                              BasicConv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _max_pool(x, 1, padding=1) if self.max_pool else _avg_pool_no_pad(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """Images [B,H,W,3] in [-1, 1] -> pool3 features [B, 2048] in `dtype`."""

    dtype: jnp.dtype = jnp.float32  # float64 (with x64 on) only for the parity test

    @nn.compact
    def __call__(self, images):
        x = jax.image.resize(images.astype(self.dtype), (images.shape[0], 299, 299, 3),
                             "bilinear", antialias=False)
        x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x, 2)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x, 2)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


# state-dict suffix -> (param name, conversion)
_TENSORS = {"conv.weight": ("kernel", lambda w: np.transpose(w, (2, 3, 1, 0))),
            "bn.weight": ("scale", None), "bn.bias": ("bias", None),
            "bn.running_mean": ("mean", None), "bn.running_var": ("var", None)}


def params_from_state_dict(state: dict[str, np.ndarray]) -> dict:
    """pytorch-fid's FID Inception state dict (numpy values) -> this module's params.

    The classifier (`fc.*`) and BatchNorm's `num_batches_tracked` are not needed for pool3.
    """
    params: dict = {}
    for name, value in state.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        *path, layer, tensor = name.split(".")
        suffix = f"{layer}.{tensor}"
        if suffix not in _TENSORS:
            raise ValueError(f"unexpected Inception tensor {name!r}")
        param, convert = _TENSORS[suffix]
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[param] = np.asarray(convert(value) if convert else value, np.float32)
    return params


def load_params(path: str) -> dict:
    """Params from a local pt_inception-2015-12-05 .pth (or .safetensors) file, checked
    against the module's shapes; one-line errors for a missing or mismatched file."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"Inception weights file {path!r} not found: expected pytorch-fid's "
            f"pt_inception-2015-12-05-6726825d.pth (from its GitHub release fid_weights) or the "
            f"same state dict as .safetensors")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        state = load_file(path)
    else:
        import torch
        state = {k: v.numpy() for k, v in torch.load(path, map_location="cpu",
                                                     weights_only=True).items()}
    params = params_from_state_dict(state)
    expected = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                              jnp.zeros((1, 75, 75, 3)))["params"]
    want = {jax.tree_util.keystr(p): v.shape for p, v in
            jax.tree_util.tree_leaves_with_path(nn.unbox(expected))}
    have = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(params)}
    if want != have:
        wrong = sorted(set(want.items()) ^ set(have.items()))[:3]
        raise ValueError(f"Inception weights file {path!r} does not fit the FID Inception: "
                         f"e.g. {wrong}")
    return params
