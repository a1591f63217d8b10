"""diffusers' `VQModel` (aMUSEd's VQ-GAN) as a second tokenizer family.

The same taming-transformers layout as models/vqgan.py, and built from its `ResBlock`,
`AttnBlock`, `conv` and `group_norm` (diffusers' ResnetBlock2D and the mid-block attention are
those, GroupNorm eps 1e-6 included), but composed as diffusers composes it: a mid block of two
res blocks around an optional attention, decoder levels of `layers_per_block + 1` res blocks,
per-level widths from `block_out_channels`, a 1x1 `quant_conv` / `post_quant_conv` around a
plain (not l2-normalised) codebook searched by Euclidean distance, as `VectorQuantizer` does.

The tokenizer interface is models/vqgan.py's: `encode(images [B,H,W,3] in [-1,1]) -> ids
[B,H/f,W/f]` and `decode(ids) -> images in [-1,1]` float32, `downsample_factor`,
`codebook_size`. aMUSEd's VQ-GAN reads and writes pixels in [0,1] (its pipeline's image
processor has `do_normalize=False`), so with `unit_range` the interface converts at both ends.
Decode in float32: aMUSEd's config sets `force_upcast` because fp16 decoding overflows.

Strided-conv downsampling: diffusers pads one zero row and column at the bottom and right and
convolves 3x3 with stride 2 and no padding, which on an even grid is exactly "SAME" padding.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.models.vqgan import AttnBlock, ResBlock, conv, group_norm

ENCODER_BLOCKS = ("DownEncoderBlock2D",)
DECODER_BLOCKS = ("UpDecoderBlock2D",)


@dataclasses.dataclass(frozen=True)
class VQModelConfig:
    """diffusers' VQModel config.json fields (defaults: aMUSEd's vqvae/)."""
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Sequence[int] = (128, 256, 256, 512, 768)
    layers_per_block: int = 2
    latent_channels: int = 64
    num_vq_embeddings: int = 8192
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None  # None: latent_channels
    mid_block_add_attention: bool = False
    unit_range: bool = True  # pixels in [0,1] (aMUSEd), not [-1,1]

    @classmethod
    def from_diffusers(cls, config: dict) -> "VQModelConfig":
        problems = []
        if config.get("norm_type", "group") != "group":
            problems.append(f"norm_type {config['norm_type']!r} (only 'group')")
        if config.get("act_fn", "silu") != "silu":
            problems.append(f"act_fn {config['act_fn']!r} (only 'silu')")
        if set(config.get("down_block_types", ENCODER_BLOCKS)) != set(ENCODER_BLOCKS):
            problems.append(f"down_block_types {config['down_block_types']} (only {ENCODER_BLOCKS[0]})")
        if set(config.get("up_block_types", DECODER_BLOCKS)) != set(DECODER_BLOCKS):
            problems.append(f"up_block_types {config['up_block_types']} (only {DECODER_BLOCKS[0]})")
        if problems:
            raise ValueError("VQModel with " + "; ".join(problems) + " is not supported")
        fields = {f.name for f in dataclasses.fields(cls)} - {"unit_range"}
        kw = {k: v for k, v in config.items() if k in fields}
        kw["block_out_channels"] = tuple(kw.get("block_out_channels", (64,)))
        return cls(**kw)

    @property
    def code_dim(self) -> int:
        return self.vq_embed_dim or self.latent_channels


class _Mid(nn.Module):
    """Res block, optional single-head attention, res block (diffusers' UNetMidBlock2D)."""
    groups: int
    attention: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = ResBlock(x.shape[-1], self.groups, dtype=self.dtype, name="res_0")(x)
        if self.attention:
            x = AttnBlock(self.groups, dtype=self.dtype, name="attn")(x)
        return ResBlock(x.shape[-1], self.groups, dtype=self.dtype, name="res_1")(x)


class VQEncoder(nn.Module):
    config: VQModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c, dt = self.config, self.dtype
        x = conv(c.block_out_channels[0], dtype=dt, name="conv_in")(x)
        for i, width in enumerate(c.block_out_channels):
            for j in range(c.layers_per_block):
                x = ResBlock(width, c.norm_num_groups, dtype=dt, name=f"down_{i}_res_{j}")(x)
            if i < len(c.block_out_channels) - 1:
                x = conv(width, strides=2, dtype=dt, name=f"down_{i}_downsample")(x)
        x = _Mid(c.norm_num_groups, c.mid_block_add_attention, dt, name="mid")(x)
        x = nn.swish(group_norm(c.norm_num_groups, dt, name="norm_out")(x))
        return conv(c.latent_channels, dtype=dt, name="conv_out")(x)


class VQDecoder(nn.Module):
    config: VQModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        c, dt = self.config, self.dtype
        widths = tuple(reversed(c.block_out_channels))
        x = conv(widths[0], dtype=dt, name="conv_in")(z)
        x = _Mid(c.norm_num_groups, c.mid_block_add_attention, dt, name="mid")(x)
        for i, width in enumerate(widths):
            for j in range(c.layers_per_block + 1):
                x = ResBlock(width, c.norm_num_groups, dtype=dt, name=f"up_{i}_res_{j}")(x)
            if i < len(widths) - 1:
                b, h, w, ch = x.shape
                x = jax.image.resize(x, (b, 2 * h, 2 * w, ch), "nearest")
                x = conv(width, dtype=dt, name=f"up_{i}_upsample")(x)
        x = nn.swish(group_norm(c.norm_num_groups, dt, name="norm_out")(x))
        return conv(c.out_channels, dtype=dt, name="conv_out")(x)


class DiffusersVQ(nn.Module):
    """Encoder -> quant_conv -> nearest code (Euclidean) ; code -> post_quant_conv -> decoder."""
    config: VQModelConfig
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.encoder = VQEncoder(c, self.dtype)
        self.quant_conv = conv(c.code_dim, kernel=1, dtype=self.dtype)
        self.codebook = self.param("codebook", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("codebook", "code_dim")), (c.num_vq_embeddings, c.code_dim))
        self.post_quant_conv = conv(c.latent_channels, kernel=1, dtype=self.dtype)
        self.decoder = VQDecoder(c, self.dtype)

    @property
    def codebook_size(self) -> int:
        return self.config.num_vq_embeddings

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, images):
        """images [B,H,W,3] in [-1,1] -> ids [B,H/f,W/f] int32 (the nearest code)."""
        x = (images + 1) / 2 if self.config.unit_range else images
        z = self.quant_conv(self.encoder(x.astype(self.dtype))).astype(jnp.float32)
        codes = self.codebook.astype(jnp.float32)
        distance = (jnp.sum(jnp.square(z), -1, keepdims=True) - 2 * jnp.einsum("...d,kd->...k", z, codes)
                    + jnp.sum(jnp.square(codes), -1))
        return jnp.argmin(distance, axis=-1).astype(jnp.int32)

    def decode_raw(self, ids):
        """ids [B,h,w] -> the decoder's own output [B,fh,fw,3] float32 (diffusers' `decode(ids,
        force_not_quantize=True)` with `lookup_from_codebook`), unclipped, in its own range."""
        return self.decoder(self.post_quant_conv(self.codebook[ids].astype(self.dtype))).astype(jnp.float32)

    def decode(self, ids):
        """ids [B,h,w] -> images in [-1,1] float32; with `unit_range` clipped to [0,1] first,
        as aMUSEd's pipeline clips."""
        x = self.decode_raw(ids)
        return jnp.clip(x, 0, 1) * 2 - 1 if self.config.unit_range else x

    def __call__(self, images):
        return self.decode(self.encode(images))


def params_from_diffusers(get: Callable[[str], np.ndarray], config: VQModelConfig) -> dict:
    """`DiffusersVQ` params from a diffusers VQModel state dict; `get(name)` -> numpy array."""
    c = config

    def conv_p(name):  # torch [out, in, kh, kw] -> HWIO
        return {"kernel": get(f"{name}.weight").transpose(2, 3, 1, 0), "bias": get(f"{name}.bias")}

    def norm(name):
        return {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}

    def res(name, shortcut):
        p = {"GroupNorm_0": norm(f"{name}.norm1"), "Conv_0": conv_p(f"{name}.conv1"),
             "GroupNorm_1": norm(f"{name}.norm2"), "Conv_1": conv_p(f"{name}.conv2")}
        if shortcut:
            p["Conv_2"] = conv_p(f"{name}.conv_shortcut")
        return p

    def mid(name, width):
        p = {"res_0": res(f"{name}.resnets.0", False), "res_1": res(f"{name}.resnets.1", False)}
        if c.mid_block_add_attention:
            a = f"{name}.attentions.0"
            p["attn"] = {"GroupNorm_0": norm(f"{a}.group_norm")}
            for ours, theirs in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj", "to_out.0")):
                p["attn"][ours] = {"kernel": get(f"{a}.{theirs}.weight").T.reshape(1, 1, width, width),
                                   "bias": get(f"{a}.{theirs}.bias")}
        return p

    widths = c.block_out_channels
    enc = {"conv_in": conv_p("encoder.conv_in"), "norm_out": norm("encoder.conv_norm_out"),
           "conv_out": conv_p("encoder.conv_out"), "mid": mid("encoder.mid_block", widths[-1])}
    previous = widths[0]
    for i, width in enumerate(widths):
        for j in range(c.layers_per_block):
            enc[f"down_{i}_res_{j}"] = res(f"encoder.down_blocks.{i}.resnets.{j}", previous != width)
            previous = width
        if i < len(widths) - 1:
            enc[f"down_{i}_downsample"] = conv_p(f"encoder.down_blocks.{i}.downsamplers.0.conv")
    dec = {"conv_in": conv_p("decoder.conv_in"), "norm_out": norm("decoder.conv_norm_out"),
           "conv_out": conv_p("decoder.conv_out"), "mid": mid("decoder.mid_block", widths[-1])}
    previous = widths[-1]
    for i, width in enumerate(reversed(widths)):
        for j in range(c.layers_per_block + 1):
            dec[f"up_{i}_res_{j}"] = res(f"decoder.up_blocks.{i}.resnets.{j}", previous != width)
            previous = width
        if i < len(widths) - 1:
            dec[f"up_{i}_upsample"] = conv_p(f"decoder.up_blocks.{i}.upsamplers.0.conv")
    return {"encoder": enc, "quant_conv": conv_p("quant_conv"),
            "codebook": get("quantize.embedding.weight"),
            "post_quant_conv": conv_p("post_quant_conv"), "decoder": dec}
