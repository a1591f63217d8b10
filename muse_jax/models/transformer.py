"""The masked token transformer of Muse (arXiv 2301.00704, section 2.2).

Image tokens (with [MASK] = codebook_size) are embedded, a learned embedding per grid
position is added, and pre-LayerNorm blocks of self-attention, cross-attention to the
projected text embeddings and an MLP follow; the output is a logit per codebook entry for
every position ([MASK] is never predicted).

`SuperResTransformer` (Muse 2.4) is built from the same `Block`s: a stack of them without
cross-attention encodes the low-resolution tokens, whose outputs join the projected text as
the cross-attention context of the high-resolution blocks, whose self-attention is multi-axis
(models/multi_axis.py) so that 64x64 tokens stay affordable.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from muse_jax.models.attention import MultiHeadAttention
from muse_jax.models.multi_axis import MultiAxis

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
    self_attention_fn: Callable | None = None  # MultiHeadAttention.attention_fn of self-attention

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
        attention = lambda name, fn=None: MultiHeadAttention(  # noqa: E731
            self.num_heads, width // self.num_heads, self.dtype, fn, name=name)
        if x is None:
            return attention("cross_attention").key_value(context)
        drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=self.deterministic)  # noqa: E731
        h = _layer_norm(self.dtype)(x)
        x = x + drop(attention("self_attention", self.self_attention_fn)(h, h))
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
        context = None
        if context_kv is None:
            context = _dense(self.width, ("text_embed", "embed"), self.dtype, "text_proj")(
                _layer_norm(self.dtype, "text_norm")(text_emb.astype(self.dtype)))
            if tokens is None:
                return {"kv": tuple(b.context_key_value(context) for b in blocks), "mask": text_mask}
        x = _grid_embedding(self, tokens, self.codebook_size + 1, self.grid)
        return _predict(self, blocks, x, context, text_mask, context_kv, deterministic)


def _grid_embedding(module, tokens, vocab: int, grid, prefix: str = ""):
    """Token embedding plus one learned vector per grid cell (h x w, not a 1D sequence, as in
    MaskGIT): [B, h*w] ids -> [B, h*w, width]. Created in `module`'s scope."""
    h, w = grid
    embed = nn.Embed(vocab, module.width, dtype=module.dtype, name=f"{prefix}token_embed",
                     embedding_init=nn.with_logical_partitioning(_EMBED_INIT, ("vocab", "embed")))
    pos = module.param(f"{prefix}pos_embed",
                       nn.with_logical_partitioning(_EMBED_INIT, (None, None, "embed")),
                       (h, w, module.width))
    return embed(tokens) + pos.reshape(h * w, module.width).astype(module.dtype)


def _predict(module, blocks, x, context, context_mask, context_kv, deterministic):
    """The token pass after the embedding: dropout, the blocks, final norm, logits [B,N,K] f32."""
    x = nn.Dropout(module.dropout)(x, deterministic=deterministic)
    for i, b in enumerate(blocks):
        if context_kv is None:
            x = b(x, context, context_mask)
        else:
            x = b(x, None, context_kv["mask"], context_kv=context_kv["kv"][i])
    x = _layer_norm(module.dtype, "final_norm")(x)
    logits = _dense(module.codebook_size, ("embed", "vocab"), module.dtype, "logits")(x)
    return logits.astype(jnp.float32)


class SuperResTransformer(nn.Module):
    """High-res tokens [B, H*W] + low-res tokens [B, h*w] + text -> logits [B, H*W, codebook].

    Muse 2.4: the low-res tokens are embedded and encoded by `low_res_depth` self-attention
    blocks; their outputs, appended to the projected text, are the context that every high-res
    block cross-attends to. The high-res self-attention is multi-axis with `window` (0: dense).
    `encode_context` computes that context's keys and values once per prompt and low-res image,
    as `MaskedTransformer.encode_context` does for the text alone.
    """
    codebook_size: int
    grid: Sequence[int]
    low_res_codebook_size: int
    low_res_grid: Sequence[int]
    width: int
    depth: int
    low_res_depth: int
    num_heads: int
    mlp_dim: int
    window: int = 8
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    # Not in Muse: also add the encoded low-res tokens, projected and upsampled to the high-res
    # grid, to the high-res token embeddings. With cross-attention alone the model must first
    # learn which low-res tokens lie under each high-res one, which a CPU-sized run does not
    # manage in a few hundred steps; this hands it the correspondence.
    low_res_skip: bool = False

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    def encode_context(self, text_emb, text_mask, low_res_tokens):
        """{"kv": ((k, v) of each block), "mask": [B, L + h*w]} of the text and low-res tokens."""
        return self(None, low_res_tokens, text_emb, text_mask)

    @nn.compact
    def __call__(self, tokens, low_res_tokens=None, text_emb=None, text_mask=None, *,
                 context_kv=None, deterministic: bool = True):
        """Logits for `tokens`; the conditioning from `low_res_tokens` and the text or, when
        given, from `context_kv` (`encode_context`'s output). tokens=None: `encode_context`."""
        block = nn.remat(Block) if self.remat else Block
        self_attention = MultiAxis(tuple(self.grid), self.window) if self.window else None
        blocks = [block(self.num_heads, self.mlp_dim, self.dropout, deterministic, dtype=self.dtype,
                        self_attention_fn=self_attention, name=f"block_{i}")
                  for i in range(self.depth)]
        context = mask = None
        if context_kv is None:
            text = _dense(self.width, ("text_embed", "embed"), self.dtype, "text_proj")(
                _layer_norm(self.dtype, "text_norm")(text_emb.astype(self.dtype)))
            low = _grid_embedding(self, low_res_tokens, self.low_res_codebook_size,
                                  self.low_res_grid, "low_res_")
            low = nn.Dropout(self.dropout)(low, deterministic=deterministic)
            for i in range(self.low_res_depth):  # dense: the low-res grid is small
                low = block(self.num_heads, self.mlp_dim, self.dropout, deterministic,
                            cross_attention=False, dtype=self.dtype,
                            name=f"low_res_block_{i}")(low, None, None)
            low = _layer_norm(self.dtype, "low_res_norm")(low)
            context = jnp.concatenate([text, low], axis=1)
            mask = jnp.concatenate([text_mask, jnp.ones(low.shape[:2], bool)], axis=1)
            skip = self._upsample(low) if self.low_res_skip else None
            if tokens is None:
                encoded = {"kv": tuple(b.context_key_value(context) for b in blocks), "mask": mask}
                return encoded if skip is None else {**encoded, "skip": skip}
        else:
            skip = context_kv.get("skip")
        x = _grid_embedding(self, tokens, self.codebook_size + 1, self.grid)
        if skip is not None:
            x = x + skip
        return _predict(self, blocks, x, context, mask, context_kv, deterministic)

    def _upsample(self, low):
        """[B, h*w, width] -> projected, nearest-upsampled [B, H*W, width] (`low_res_skip`)."""
        (h, w), (big_h, big_w) = self.low_res_grid, self.grid
        low = _dense(self.width, ("mlp", "embed"), self.dtype, "low_res_skip")(low)
        low = low.reshape(low.shape[0], h, 1, w, 1, self.width)
        low = jnp.broadcast_to(low, (low.shape[0], h, big_h // h, w, big_w // w, self.width))
        return low.reshape(low.shape[0], big_h * big_w, self.width)
