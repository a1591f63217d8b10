"""RMS normalisation, as T5 and diffusers (aMUSEd's U-ViT) compute it.

x / sqrt(mean(x^2) + eps), statistics in float32 whatever the compute dtype, no mean
subtraction and no bias; times a learned scale unless `use_scale` is off (diffusers'
`elementwise_affine=False`).
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
