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


class _ToHeads(nn.Module):
    """x [B,L,D] -> [B,L,heads,head_dim] by a kernel [embed, heads, kv]."""
    num_heads: int
    head_dim: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, ("embed", "heads", "kv")),
                            (x.shape[-1], self.num_heads, self.head_dim))
        return jnp.einsum("bld,dhk->blhk", x.astype(self.dtype), kernel.astype(self.dtype))


class _FromHeads(nn.Module):
    """x [B,L,heads,head_dim] -> [B,L,features] by a kernel [heads, kv, embed]."""
    features: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
        kernel = self.param("kernel", nn.with_logical_partitioning(init, ("heads", "kv", "embed")),
                            (*x.shape[-2:], self.features))
        return jnp.einsum("blhk,hkd->bld", x, kernel.astype(self.dtype))


class MultiHeadAttention(nn.Module):
    """Queries from `x`, keys and values from a context (`x` itself for self-attention).

    `__call__(x, context)` does both; `key_value(context)` and `attend(x, kv)` split them, so
    that a context fixed over many calls (the prompt over the decoding steps) is projected
    once.

    The projections keep 3-D kernels ([embed, heads, kv], [heads, kv, embed]) rather than
    `nn.DenseGeneral`'s: DenseGeneral names them as well, but it initialises a flattened 2-D
    kernel and unboxes it to reshape, which applies the 3-D sharding constraint to the 2-D
    array, so a sharded init (under a mesh and the logical rules) fails. text/t5.py and
    text/bert.py use DenseGeneral safely: their weights are loaded, never initialised so.
    """
    num_heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    # (q, k, v, mask) -> out, all [B,L,H,D]; None: dot_product_attention. Same parameters either way.
    attention_fn: Callable | None = None
    out_features: int | None = None  # width of the output; None: num_heads * head_dim

    def setup(self):
        heads = (self.num_heads, self.head_dim, self.dtype)
        self.query, self.key, self.value = _ToHeads(*heads), _ToHeads(*heads), _ToHeads(*heads)
        self.out = _FromHeads(self.out_features or self.num_heads * self.head_dim, self.dtype)
    def key_value(self, context):
        """Keys and values [B,Lk,H,D] of `context` [B,Lk,Dc], for `attend`."""
        return self.key(context), self.value(context)

    def attend(self, x, kv, mask=None):
        """x [B,Lq,D] attends to the keys and values `kv` of `key_value`; `mask` bool,
        broadcastable to [B,H,Lq,Lk], True where a query may attend."""
        out = (self.attention_fn or dot_product_attention)(self.query(x), *kv, mask)
        return self.out(out)

    def __call__(self, x, context, mask=None):
        """x [B,Lq,D] attends to `context` [B,Lk,Dc]."""
        return self.attend(x, self.key_value(context), mask)
