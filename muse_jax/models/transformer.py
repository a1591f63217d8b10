"""The masked token transformer of Muse (arXiv 2301.00704, section 2.2).

Image tokens (with [MASK] = codebook_size) are embedded, a learned embedding per grid
position is added, and pre-LayerNorm blocks of self-attention, cross-attention to the
projected text embeddings and an MLP follow; the output is a logit per codebook entry for
every position ([MASK] is never predicted). `Block` is shared with the super-resolution
stage, which adds its own conditioning tokens to the cross-attention context.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from muse_jax.models.attention import MultiHeadAttention

_EMBED_INIT = nn.initializers.normal(0.02)
_DENSE_INIT = nn.initializers.xavier_uniform()


def _layer_norm(dtype, name=None):
    return nn.LayerNorm(dtype=dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def _dense(features, axes, dtype, name=None):
    return nn.Dense(features, dtype=dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(_DENSE_INIT, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]))


class Block(nn.Module):
    """Pre-LN: x += SelfAttn(LN x); x += CrossAttn(LN x, context); x += MLP(LN x)."""
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    deterministic: bool = True
    cross_attention: bool = True
    dtype: jnp.dtype = jnp.float32

    def context_key_value(self, context):
        """The cross-attention's keys and values of `context` [B,L,width], to pass back as
        `__call__(..., context_kv=)`: a fixed context is then projected once, not every call.
        The head size is taken from the context's width, which must be the block's width."""
        return self(None, context, None)

    @nn.compact
    def __call__(self, x, context, context_mask, *, context_kv=None):
        """x [B,N,width]; the cross-attention reads `context` [B,L,Dc] or, when given, its keys
        and values `context_kv` (then `context` is not used). x=None: `context_key_value`."""
        width = (context if x is None else x).shape[-1]
        attention = lambda name: MultiHeadAttention(  # noqa: E731
            self.num_heads, width // self.num_heads, self.dtype, name=name)
        if x is None:
            return attention("cross_attention").key_value(context)
        drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=self.deterministic)  # noqa: E731
        h = _layer_norm(self.dtype)(x)
        x = x + drop(attention("self_attention")(h, h))
        if self.cross_attention:
            h = _layer_norm(self.dtype)(x)
            x = x + drop(attention("cross_attention")(h, context, context_mask[:, None, None, :],
                                                      kv=context_kv))
        h = _layer_norm(self.dtype)(x)
        h = nn.gelu(_dense(self.mlp_dim, ("embed", "mlp"), self.dtype, "mlp_in")(h))
        return x + drop(_dense(width, ("mlp", "embed"), self.dtype, "mlp_out")(drop(h)))


class MaskedTransformer(nn.Module):
    """tokens [B, h*w] int32 (+ text [B,L,Dt], mask [B,L]) -> logits [B, h*w, codebook] f32.

    The text enters only through each block's cross-attention keys and values, which
    `encode_context` computes on their own: the sampler does so once per prompt and passes
    them to every decoding step (`context_kv=`) instead of the text.
    """
    codebook_size: int
    grid: Sequence[int]
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    def encode_context(self, text_emb, text_mask):
        """{"kv": ((k, v) of each block, each [B,L,heads,head_dim]), "mask": text_mask [B,L]}.

        Everything the token pass needs from the text: text_norm, text_proj and every block's
        cross-attention key and value projections, which depend on the prompt alone.
        `model.apply(params, text_emb, text_mask, method="encode_context")`.
        """
        return self(None, text_emb, text_mask)

    @nn.compact
    def __call__(self, tokens, text_emb=None, text_mask=None, *, context_kv=None,
                 deterministic: bool = True):
        """Logits for `tokens`, reading the text from `text_emb`/`text_mask` or, when given,
        from `context_kv` (the output of `encode_context`; then the text is not used).
        tokens=None: `encode_context`."""
        block = nn.remat(Block) if self.remat else Block
        blocks = [block(self.num_heads, self.mlp_dim, self.dropout, deterministic, dtype=self.dtype,
                        name=f"block_{i}") for i in range(self.depth)]
        if context_kv is None:
            context = _dense(self.width, ("text_embed", "embed"), self.dtype, "text_proj")(
                _layer_norm(self.dtype, "text_norm")(text_emb.astype(self.dtype)))
            if tokens is None:
                return {"kv": tuple(b.context_key_value(context) for b in blocks), "mask": text_mask}
        h, w = self.grid
        embed = nn.Embed(self.codebook_size + 1, self.width, dtype=self.dtype, name="token_embed",
                         embedding_init=nn.with_logical_partitioning(_EMBED_INIT, ("vocab", "embed")))
        # One learned vector per grid cell (h x w, not a 1D sequence), as in MaskGIT.
        pos = self.param("pos_embed", nn.with_logical_partitioning(_EMBED_INIT, (None, None, "embed")),
                         (h, w, self.width))
        x = embed(tokens) + pos.reshape(h * w, self.width).astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        for i, b in enumerate(blocks):
            if context_kv is None:
                x = b(x, context, text_mask)
            else:
                x = b(x, None, context_kv["mask"], context_kv=context_kv["kv"][i])
        x = _layer_norm(self.dtype, "final_norm")(x)
        logits = _dense(self.codebook_size, ("embed", "vocab"), self.dtype, "logits")(x)
        return logits.astype(jnp.float32)
