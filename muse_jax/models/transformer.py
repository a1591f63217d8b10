"""The masked token transformers of Muse (arXiv 2301.00704): base (section 2.2) and
super-resolution (section 2.4), on one `Trunk`.

Image tokens (with [MASK] = codebook_size) are embedded with a learned vector per grid
position, pre-LayerNorm `Block`s of self-attention, cross-attention to a context and an MLP
follow, and the `OutputHead` gives a logit per codebook entry for every position ([MASK] is
never predicted). The context is the projected text for the base model; for the SR model it is
the projected text followed by the low-res tokens, encoded by a trunk of blocks without
cross-attention, and its high-res self-attention is multi-axis (models/multi_axis.py) so that
64x64 tokens stay affordable.

Both models split the same way: `encode_context(text, text_mask[, low_res])` computes every
block's cross-attention keys and values, which depend on the prompt (and low-res image) alone;
`logits(tokens, context)` is the token pass; `__call__` does both, for training. The sampler
encodes the context once per prompt and runs only the token pass at each decoding step.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from muse_jax.models.attention import MultiHeadAttention
from muse_jax.models.multi_axis import MultiAxis

_EMBED_INIT = nn.initializers.normal(0.02)
_DENSE_INIT = nn.initializers.xavier_uniform()


def layer_norm(dtype, name=None) -> nn.LayerNorm:
    return nn.LayerNorm(dtype=dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def dense(features, axes, dtype, name=None) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(_DENSE_INIT, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]))


def grid_sincos_init(key, shape, dtype=jnp.float32):
    """[h, w, width]: sines and cosines of the row in the first half of the width, of the column
    in the second, at geometric frequencies from 1 to 1 / (2 max(h, w)) radians a token (the
    grid, not the 10^4 of a text transformer's lengths), scaled to the normal init's 0.02 std.

    Not in Muse or MaskGIT, whose learned position vectors start independent: starting from a
    smooth 2-D code, nearby tokens start with nearby queries, so what a token learns about
    where it is (which part of the prompt to read) carries to its neighbours. Measured on the
    demo (benchmarks/demo_recipe.py, 600 steps): training loss 1.42 -> 1.25, the oracle within
    the noise of 64 prompts. Off by default; the demo uses it with `TextBlocks`."""
    del key
    h, w, width = shape
    quarter = width // 4
    freqs = 1.0 / ((2.0 * max(h, w)) ** (jnp.arange(quarter) / quarter))

    def code(n):  # [n, 2 * quarter]
        angle = jnp.arange(n)[:, None] * freqs[None]
        return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=1)

    rows = jnp.broadcast_to(code(h)[:, None], (h, w, 2 * quarter))
    cols = jnp.broadcast_to(code(w)[None], (h, w, 2 * quarter))
    pos = jnp.concatenate([rows, cols, jnp.zeros((h, w, width - 4 * quarter))], axis=-1)
    return (0.02 * jnp.sqrt(2.0) * pos).astype(dtype)


POS_INITS = {"normal": _EMBED_INIT, "sincos": grid_sincos_init}


def to_patches(x, grid: Sequence[int], patch: int):
    """[B, h*w, ...] in row-major grid order -> [B, (h/p)*(w/p), p*p, ...], each patch's p x p
    cells row-major."""
    (h, w), p, rest = grid, patch, x.shape[2:]
    x = x.reshape(x.shape[0], h // p, p, w // p, p, *rest)
    x = jnp.moveaxis(x, 2, 3)  # [B, h/p, w/p, p, p, ...]
    return x.reshape(x.shape[0], (h // p) * (w // p), p * p, *rest)


def from_patches(x, grid: Sequence[int], patch: int):
    """The inverse of `to_patches`: [B, (h/p)*(w/p), p*p, ...] -> [B, h*w, ...]."""
    (h, w), p, rest = grid, patch, x.shape[3:]
    x = x.reshape(x.shape[0], h // p, w // p, p, p, *rest)
    x = jnp.moveaxis(x, 3, 2)  # [B, h/p, p, w/p, p, ...]
    return x.reshape(x.shape[0], h * w, *rest)


class GridEmbedding(nn.Module):
    """Token embedding plus one learned vector per grid cell (h x w, not a 1-D sequence, as in
    MaskGIT): ids [B, h*w] -> [B, h*w, width]. `pos_init` names the position vectors' init in
    `POS_INITS`.

    With `patch` p > 1 (not in Muse), each p x p block of tokens is one position: ids
    [B, h*w] -> [B, (h/p)*(w/p), width], the sum of one embedding per token from a table of its
    own for each of the p*p places in the block (a linear map of the block's one-hot codes, as
    a patch embedding is of pixels). p*p times fewer positions make a CPU-sized model's step
    that much cheaper in attention and MLPs; `OutputHead` predicts the p*p tokens back.
    """
    vocab_size: int
    grid: Sequence[int]
    width: int
    dtype: jnp.dtype = jnp.float32
    pos_init: str = "normal"
    patch: int = 1

    @nn.compact
    def __call__(self, tokens):
        (h, w), p = self.grid, self.patch
        embed = nn.Embed(p * p * self.vocab_size, self.width, dtype=self.dtype, name="token_embed",
                         embedding_init=nn.with_logical_partitioning(_EMBED_INIT, ("vocab", "embed")))
        pos = self.param("pos_embed", nn.with_logical_partitioning(POS_INITS[self.pos_init],
                                                                   (None, None, "embed")),
                         (h // p, w // p, self.width))
        pos = pos.reshape((h // p) * (w // p), self.width).astype(self.dtype)
        if p == 1:
            return embed(tokens) + pos
        places = jnp.arange(p * p) * self.vocab_size  # each place's rows of the table
        return embed(to_patches(tokens, self.grid, p) + places).sum(axis=2) + pos


class TextProjection(nn.Module):
    """Text embeddings [B,L,Dt] -> LayerNorm -> Dense -> [B,L,width], the cross-attention
    context (or its text part)."""
    width: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, text):
        text = layer_norm(self.dtype, "norm")(text.astype(self.dtype))
        return dense(self.width, ("text_embed", "embed"), self.dtype, "proj")(text)


class TextBlocks(nn.Module):
    """Trainable self-attention over the projected text: [B,L,width] + mask [B,L] -> same.

    Not in Muse, where T5-XXL's embeddings feed cross-attention directly. A small frozen encoder
    (MiniLM-L6) leaves which colour and shape go with which position word weakly bound, and a
    CPU-sized model does not learn to untangle that through cross-attention alone in a few
    hundred steps. These blocks, with a learned vector per text position, can gather each
    object's words onto its position words first. Off by default; two in the demo
    (configs/base_shapes.py:demo), where they carry phrasings training never used: over
    MiniLM's layer-2 states a caption-only reader (benchmarks/text_probe.py, 1500 steps, three
    seeds, 2026-12-06) reads 78-86 % of them right with two blocks against 59-75 % without, and
    the demo's image model draws 92.6 % of them right against 67.2 % (1500 steps, 256 prompts).
    Not free at the demo's size, where the text (40 tokens) is not much shorter than the image
    (64 positions): two blocks took its step from 0.24 to 0.30 s.
    """
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    max_length: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, text, mask, deterministic: bool = True):
        length = text.shape[1]
        if length > self.max_length:
            raise ValueError(f"text of {length} tokens, but the text blocks were built for "
                             f"{self.max_length} (text.max_length)")
        pos = self.param("pos_embed", nn.with_logical_partitioning(_EMBED_INIT, (None, "embed")),
                         (self.max_length, self.width))
        x = text + pos[:length].astype(self.dtype)
        for i in range(self.depth):
            x = Block(self.width, self.num_heads, self.mlp_dim, self.dropout, False, self.dtype,
                      name=f"block_{i}")(x, None, None, deterministic,
                                         self_mask=mask[:, None, None, :])
        return layer_norm(self.dtype, "norm")(x)


class OutputHead(nn.Module):
    """Final LayerNorm, then (with `num_classes`) the logits [B,N,K] in float32 whatever the
    compute dtype; without, the normalised features (the SR model's low-res encoding). With
    `patch` p > 1, each of the [B, (h/p)*(w/p)] positions predicts its p x p tokens (`grid`
    h x w), returned as logits [B, h*w, K] in grid order."""
    num_classes: int | None
    dtype: jnp.dtype = jnp.float32
    patch: int = 1
    grid: Sequence[int] = ()

    @nn.compact
    def __call__(self, x):
        x = layer_norm(self.dtype, "norm")(x)
        if self.num_classes is None:
            return x
        p = self.patch
        logits = dense(p * p * self.num_classes, ("embed", "vocab"), self.dtype, "logits")(x)
        if p > 1:
            logits = from_patches(logits.reshape(*x.shape[:2], p * p, self.num_classes),
                                  self.grid, p)
        return logits.astype(jnp.float32)


class Block(nn.Module):
    """Pre-LN: x += SelfAttn(LN x); x += CrossAttn(LN x, context); x += MLP(LN x).

    The cross-attention reads its context's keys and values (`context_key_value`), so that a
    context fixed over many calls is projected once.
    """
    width: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    cross_attend: bool = True
    dtype: jnp.dtype = jnp.float32
    self_attention_fn: Callable | None = None  # MultiHeadAttention.attention_fn of self-attention

    def setup(self):
        head_dim = self.width // self.num_heads
        self.self_attention_norm = layer_norm(self.dtype)
        self.self_attention = MultiHeadAttention(self.num_heads, head_dim, self.dtype,
                                                 self.self_attention_fn, self.width)
        if self.cross_attend:
            self.cross_attention_norm = layer_norm(self.dtype)
            self.cross_attention = MultiHeadAttention(self.num_heads, head_dim, self.dtype,
                                                      out_features=self.width)
        self.mlp_norm = layer_norm(self.dtype)
        self.mlp_in = dense(self.mlp_dim, ("embed", "mlp"), self.dtype)
        self.mlp_out = dense(self.width, ("mlp", "embed"), self.dtype)
        self.drop = nn.Dropout(self.dropout)

    def context_key_value(self, context):
        """The cross-attention's keys and values [B,L,heads,head_dim] of `context` [B,L,width]."""
        return self.cross_attention.key_value(context)

    def __call__(self, x, context_kv, context_mask, deterministic: bool = True, self_mask=None):
        """x [B,N,width]; `context_kv` from `context_key_value`, `context_mask` [B,L] (both
        None without cross-attention); `self_mask` broadcastable to [B,H,N,N], True where a
        position may attend (the text's padding; image tokens attend everywhere)."""
        drop = lambda h: self.drop(h, deterministic=deterministic)  # noqa: E731
        h = self.self_attention_norm(x)
        x = x + drop(self.self_attention(h, h, self_mask))
        if self.cross_attend:
            h = self.cross_attention_norm(x)
            x = x + drop(self.cross_attention.attend(h, context_kv, context_mask[:, None, None, :]))
        h = nn.gelu(self.mlp_in(self.mlp_norm(x)))
        return x + drop(self.mlp_out(drop(h)))


class Trunk(nn.Module):
    """Token ids on a grid -> `GridEmbedding`, dropout, `depth` `Block`s, `OutputHead`.

    The body of both models (and, without cross-attention or classes, the SR model's low-res
    encoder): `encode_context` turns a context into every block's cross-attention keys and
    values, which `__call__` then reads.
    """
    vocab_size: int
    grid: Sequence[int]
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    num_classes: int | None
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    cross_attend: bool = True
    self_attention_fn: Callable | None = None
    pos_init: str = "normal"  # GridEmbedding's
    patch: int = 1  # tokens per side of one position (GridEmbedding, OutputHead)

    def setup(self):
        self.embed = GridEmbedding(self.vocab_size, self.grid, self.width, self.dtype,
                                   self.pos_init, self.patch)
        # Positional arguments of Block.__call__, self being 0: `deterministic` is static.
        block = nn.remat(Block, static_argnums=(4,)) if self.remat else Block
        self.blocks = [block(self.width, self.num_heads, self.mlp_dim, self.dropout,
                             self.cross_attend, self.dtype, self.self_attention_fn)
                       for _ in range(self.depth)]
        self.head = OutputHead(self.num_classes, self.dtype, self.patch, self.grid)
        self.drop = nn.Dropout(self.dropout)

    def encode_context(self, context, context_mask) -> dict:
        """{"kv": ((k, v) of each block, each [B,L,heads,head_dim]), "mask": context_mask [B,L]}."""
        return {"kv": tuple(b.context_key_value(context) for b in self.blocks),
                "mask": context_mask}

    def __call__(self, tokens, context: dict | None = None, *, offset=None,
                 deterministic: bool = True):
        """tokens [B, h*w] -> head outputs [B, h*w, ...]; `context` from `encode_context` (None
        without cross-attention); `offset` [B, positions, width] is added to the embeddings."""
        x = self.embed(tokens)
        if offset is not None:
            x = x + offset
        x = self.drop(x, deterministic=deterministic)
        for i, block in enumerate(self.blocks):
            kv, mask = (context["kv"][i], context["mask"]) if self.cross_attend else (None, None)
            x = block(x, kv, mask, deterministic)
        return self.head(x)


class MaskedTransformer(nn.Module):
    """tokens [B, h*w] int32 + text [B,L,Dt], mask [B,L] -> logits [B, h*w, codebook] f32."""
    codebook_size: int
    grid: Sequence[int]
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    text_depth: int = 0  # `TextBlocks` over the projected text (0: Muse's projection alone)
    text_length: int = 0  # the longest text the `TextBlocks` take (text.max_length)
    pos_init: str = "normal"  # of the grid's position vectors (`POS_INITS`)
    patch: int = 1  # tokens per side of one transformer position (`GridEmbedding`; not in Muse)

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    def setup(self):
        if any(side % self.patch for side in self.grid):
            raise ValueError(f"patch {self.patch} does not divide the token grid {tuple(self.grid)}")
        self.text = TextProjection(self.width, self.dtype)
        if self.text_depth:
            self.text_blocks = TextBlocks(self.width, self.text_depth, self.num_heads,
                                          self.mlp_dim, self.text_length, self.dropout,
                                          self.dtype)
        self.trunk = Trunk(self.codebook_size + 1, self.grid, self.width, self.depth,
                           self.num_heads, self.mlp_dim, self.codebook_size, self.dropout,
                           self.dtype, self.remat, pos_init=self.pos_init, patch=self.patch)

    def encode_context(self, text, text_mask, deterministic: bool = True) -> dict:
        """Everything the token pass needs of the text: its projection (and `TextBlocks`)
        through every block's cross-attention keys and values (`Trunk.encode_context`)."""
        text = self.text(text)
        if self.text_depth:
            text = self.text_blocks(text, text_mask, deterministic)
        return self.trunk.encode_context(text, text_mask)

    def logits(self, tokens, context: dict, deterministic: bool = True):
        """The token pass, reading the text from `encode_context`'s output."""
        return self.trunk(tokens, context, deterministic=deterministic)

    def __call__(self, tokens, text, text_mask, *, deterministic: bool = True):
        return self.logits(tokens, self.encode_context(text, text_mask, deterministic),
                           deterministic)


class SuperResTransformer(nn.Module):
    """High-res tokens [B, H*W] + text + low-res tokens [B, h*w] -> logits [B, H*W, codebook].

    Muse 2.4: the low-res tokens are embedded and encoded by `low_res_depth` self-attention
    blocks; their outputs, appended to the projected text, are the context that every high-res
    block cross-attends to. The high-res self-attention is multi-axis with `window` (0: dense).
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

    def setup(self):
        self.text = TextProjection(self.width, self.dtype)
        # Dense self-attention: the low-res grid is small.
        self.low_res = Trunk(self.low_res_codebook_size, self.low_res_grid, self.width,
                             self.low_res_depth, self.num_heads, self.mlp_dim, None, self.dropout,
                             self.dtype, self.remat, cross_attend=False)
        if self.low_res_skip:
            self.skip_proj = dense(self.width, ("mlp", "embed"), self.dtype)
        self.trunk = Trunk(self.codebook_size + 1, self.grid, self.width, self.depth,
                           self.num_heads, self.mlp_dim, self.codebook_size, self.dropout,
                           self.dtype, self.remat,
                           self_attention_fn=MultiAxis(tuple(self.grid), self.window)
                           if self.window else None)

    def encode_context(self, text, text_mask, low_res_tokens, *, deterministic: bool = True) -> dict:
        """{"kv", "mask": [B, L + h*w]} of the text and low-res tokens (and with `low_res_skip`,
        "skip": the offset of the high-res embeddings), as `MaskedTransformer.encode_context`."""
        low = self.low_res(low_res_tokens, deterministic=deterministic)
        context = jnp.concatenate([self.text(text), low], axis=1)
        mask = jnp.concatenate([text_mask, jnp.ones(low.shape[:2], bool)], axis=1)
        encoded = self.trunk.encode_context(context, mask)
        if not self.low_res_skip:
            return encoded
        return {**encoded, "skip": self._upsample(self.skip_proj(low))}

    def logits(self, tokens, context: dict, deterministic: bool = True):
        """The token pass, reading the conditioning from `encode_context`'s output."""
        return self.trunk(tokens, context, offset=context.get("skip"), deterministic=deterministic)

    def __call__(self, tokens, text, text_mask, low_res_tokens, *, deterministic: bool = True):
        context = self.encode_context(text, text_mask, low_res_tokens, deterministic=deterministic)
        return self.logits(tokens, context, deterministic)

    def _upsample(self, low):
        """[B, h*w, width] -> nearest-upsampled [B, H*W, width]."""
        (h, w), (big_h, big_w) = self.low_res_grid, self.grid
        low = low.reshape(low.shape[0], h, 1, w, 1, self.width)
        low = jnp.broadcast_to(low, (low.shape[0], h, big_h // h, w, big_w // w, self.width))
        return low.reshape(low.shape[0], big_h * big_w, self.width)
