"""Multi-head attention shared by every transformer in muse_jax.

Self-attention over image tokens, cross-attention to text, and the super-resolution stage's
multi-axis attention (models/multi_axis.py) all go through `MultiHeadAttention`, whose core is
a plain function, `dot_product_attention` unless `attention_fn` names another: a faster kernel
(splash / flash attention on TPU or GPU) replaces that one function, not the modules.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def dot_product_attention(q, k, v, mask=None):
    """Softmax(q k^T / sqrt(d)) v, with the softmax in float32 whatever the compute dtype.

    q [B,Lq,H,D], k and v [B,Lk,H,D]; `mask` bool, broadcastable to [B,H,Lq,Lk], True where
    a query may attend. A query with no allowed key gets a zero output rather than NaN (or a
    uniform average over keys it must not see).
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * (q.shape[-1] ** -0.5)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        weights = jnp.where(mask, weights, 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)


class MultiHeadAttention(nn.Module):
    """Queries from `x`, keys and values from `context` (= `x` for self-attention).

    Kernels are explicit [embed, heads, kv] / [heads, kv, embed] params rather than
    `nn.DenseGeneral`, whose initialiser sees a flattened 2D shape and so cannot carry the
    3D logical axis names.
    """
    num_heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    # (q, k, v, mask) -> out, all [B,L,H,D]; None: dot_product_attention. Same parameters either way.
    attention_fn: Callable | None = None

    def key_value(self, context):
        """Keys and values [B,Lk,H,D] of `context`, to pass back as `__call__(..., kv=)`.

        For a context that stays fixed over many calls (the prompt over the decoding steps), so
        that it is projected once rather than at every call.
        """
        return self(None, context)

    @nn.compact
    def __call__(self, x, context=None, mask=None, *, kv=None):
        """x [B,Lq,D] attends to `context` [B,Lk,Dc], or to its keys and values `kv` from
        `key_value` (then `context` is not used). x=None returns (k, v) only: `key_value`."""
        init_in = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))

        def project(name, inputs):
            kernel = self.param(name, nn.with_logical_partitioning(init_in, ("embed", "heads", "kv")),
                                (inputs.shape[-1], self.num_heads, self.head_dim))
            return jnp.einsum("bld,dhk->blhk", inputs.astype(self.dtype), kernel.astype(self.dtype))

        # Created in the order query, key, value, out: the order fixes each one's init rng.
        q = None if x is None else project("query", x)
        k, v = kv if kv is not None else (project("key", context), project("value", context))
        if x is None:
            return k, v
        out = (self.attention_fn or dot_product_attention)(q, k, v, mask)
        init_out = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
        kernel = self.param("out", nn.with_logical_partitioning(init_out, ("heads", "kv", "embed")),
                            (self.num_heads, self.head_dim, x.shape[-1]))
        return jnp.einsum("blhk,hkd->bld", out, kernel.astype(self.dtype))
