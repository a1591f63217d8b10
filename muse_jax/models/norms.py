"""Normalisations that flax either lacks or computes slowly on a CPU.

`RMSNorm`, as T5 and diffusers (aMUSEd's U-ViT) compute it: x / sqrt(mean(x^2) + eps),
statistics in float32 whatever the compute dtype, no mean subtraction and no bias; times a
learned scale unless `use_scale` is off (diffusers' `elementwise_affine=False`).

`GroupNorm`, the convolutional tokenizers' norm: flax's `nn.GroupNorm`, computed in fewer
passes over the image (see its docstring).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
from flax.linen import with_logical_partitioning as logical
import jax
import jax.numpy as jnp


class RMSNorm(nn.Module):
    eps: float
    use_scale: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        if self.use_scale:
            scale = self.param("scale", logical(nn.initializers.ones, ("embed",)),
                               (x.shape[-1],), self.param_dtype)
            x = scale.astype(jnp.float32) * x
        return x.astype(self.dtype)


class GroupNorm(nn.Module):
    """`nn.GroupNorm` (fast variance, float32 statistics) with the same parameters, scale and
    bias [C], and the same outputs to float32 rounding, in fewer passes over x [B, ..., C].

    flax reduces x reshaped to [B, ..., groups, C/groups] over all but the batch and group
    axes, once for the mean and once for the mean square, then normalises with the group
    statistics broadcast back; XLA:CPU runs those strided reductions slowly. Here x is
    reduced over its spatial axes first, keeping channels innermost (a contiguous, vectorised
    reduction), the tiny [B, C] sums are pooled by group, and the output is one fused
    multiply-add with a per-(example, channel) scale and shift. The demo tokenizer's train
    step: benchmarks/tokenizer_step.py.
    """
    num_groups: int
    epsilon: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        channels, groups = x.shape[-1], self.num_groups
        if channels % groups:
            raise ValueError(f"{groups} groups do not divide {channels} channels")
        scale = self.param("scale", self.scale_init, (channels,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (channels,), self.param_dtype)
        spatial = tuple(range(1, x.ndim - 1))
        x32 = x.astype(jnp.float32)
        per_group = lambda s: s.reshape(-1, groups, channels // groups).mean(-1)  # noqa: E731
        mean = per_group(jnp.mean(x32, axis=spatial))
        var = jnp.maximum(per_group(jnp.mean(jnp.square(x32), axis=spatial)) - mean**2, 0.0)
        per_channel = lambda s: jnp.repeat(s, channels // groups, axis=-1)  # noqa: E731
        mul = per_channel(jax.lax.rsqrt(var + self.epsilon)) * scale.astype(jnp.float32)
        add = bias.astype(jnp.float32) - per_channel(mean) * mul
        shape = (x.shape[0],) + (1,) * len(spatial) + (channels,)
        return (x32 * mul.reshape(shape) + add.reshape(shape)).astype(self.dtype)
