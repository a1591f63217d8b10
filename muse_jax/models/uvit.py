"""aMUSEd's U-ViT (diffusers' `UVit2DModel`, arXiv 2401.01808) as a Flax module.

    tokens [B, h*w] --embed (RMSNorm, 1x1 conv)--> [B,h,w,C] --down block--> RMSNorm, Dense
      --> `num_layers` transformer layers (hidden) --> RMSNorm, Dense --> up block --> MLM head
      --> logits [B, h*w, codebook]

Conditioning: the text encoder's penultimate states are projected (`encoder_proj`, RMSNorm) and
cross-attended to by every attention layer; the pooled text embedding, concatenated with the
sinusoidal embeddings of the five micro-conditioning numbers (original width and height, crop
coordinates, aesthetic score: SDXL's micro-conditioning), becomes one vector `cond` that
modulates every norm of the transformer layers (AdaLN, "ada_norm_continuous") and every
ConvNeXt block. A down/up block is ConvNeXt blocks alternating with two cross-attention layers
(diffusers' `SkipFFTransformerBlock`: both of its attentions read the text, neither is
self-attention); aMUSEd-512 adds a 2x2 down- and up-sampling around the transformer.

What is Muse's is shared: the attention is models/attention.py's `MultiHeadAttention` (the same
3-D kernels, the same `key_value` / `attend` split), and the model splits as
models/transformer.py's do, `encode_context` (the text's keys and values for every attention
layer and `cond`, fixed over the decoding steps) then `logits(tokens, context)`, so the sampler
runs it unchanged. Tokens are flattened [B, h*w] as there; the [MASK] id is `mask_id`
(aMUSEd: vocab_size - 1 = 8255, not Muse's codebook_size).

Only `use_bias=False` (every aMUSEd checkpoint) is supported, so no layer has a bias; dropout
is not applied (aMUSEd's rates are 0). Convolutions are written as the matmuls they are (1x1
convolutions as Dense, the 3x3 depthwise one as nine shifted products, the 2x2 stride-2
down/up-sampling as reshapes around an einsum), which XLA runs well on every backend
(XLA:CPU is slow on depthwise and transposed convolutions: DESIGN.md).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
from flax.linen import with_logical_partitioning as logical
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.models.attention import MultiHeadAttention
from muse_jax.models.norms import RMSNorm

_INIT = nn.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True)
class UVitConfig:
    """diffusers' UVit2DModel config.json fields (defaults: amused-256)."""
    hidden_size: int = 1024
    cond_embed_dim: int = 768  # pooled text embedding width
    micro_cond_encode_dim: int = 256  # sinusoidal width per micro-conditioning number
    micro_cond_embed_dim: int = 1280  # 5 x micro_cond_encode_dim
    encoder_hidden_size: int = 768  # text token states width
    vocab_size: int = 8256  # codebook + [MASK], rounded up
    codebook_size: int = 8192
    in_channels: int = 768
    block_out_channels: int = 768
    num_res_blocks: int = 3
    downsample: bool = False
    upsample: bool = False
    block_num_heads: int = 12
    num_hidden_layers: int = 22
    num_attention_heads: int = 16
    intermediate_size: int = 2816
    layer_norm_eps: float = 1e-6
    ln_elementwise_affine: bool = True
    sample_size: int = 16  # token grid side

    @classmethod
    def from_diffusers(cls, config: dict) -> "UVitConfig":
        if config.get("use_bias", False):
            raise ValueError("UVit2DModel with use_bias=true is not supported (aMUSEd has none)")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in fields})

    @property
    def grid(self) -> tuple[int, int]:
        return (self.sample_size, self.sample_size)


def dense(features: int, axes: tuple[str | None, str | None], dtype, name=None) -> nn.Dense:
    """A bias-free Dense with logical names on its kernel."""
    return nn.Dense(features, use_bias=False, dtype=dtype, name=name,
                    kernel_init=logical(nn.initializers.xavier_uniform(), axes))


def sinusoidal_embedding(values, dim: int, max_period: float = 10000.0):
    """diffusers' `get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0)`:
    values [N] -> [N, dim] as (cos, sin) of values x exp(-log(max_period) i / (dim/2))."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = values.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class AdaNorm(nn.Module):
    """diffusers' AdaLayerNormContinuous: norm(x) * (1 + scale) + shift, (scale, shift) from
    Dense(silu(cond)). `kind` "rms" or "layer" (a LayerNorm with a scale and no bias)."""
    kind: str
    eps: float
    affine: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cond):
        scale, shift = jnp.split(dense(2 * x.shape[-1], ("embed", "mlp"), self.dtype, "linear")(
            nn.silu(cond)), 2, axis=-1)
        if self.kind == "rms":
            x = RMSNorm(self.eps, self.affine, self.dtype, name="norm")(x)
        else:
            x = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, use_bias=False, use_scale=self.affine,
                             use_fast_variance=False, name="norm",
                             scale_init=logical(nn.initializers.ones, ("embed",)))(x)
        return x * (1 + scale[:, None]) + shift[:, None]


class TransformerLayer(nn.Module):
    """diffusers' BasicTransformerBlock as UVit2DModel builds it: AdaNorm self-attention,
    AdaNorm cross-attention to the text, AdaNorm (LayerNorm) GEGLU feed-forward."""
    config: UVitConfig
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        heads = (c.num_attention_heads, c.hidden_size // c.num_attention_heads, self.dtype)
        norm = lambda kind: AdaNorm(kind, c.layer_norm_eps, c.ln_elementwise_affine, self.dtype)  # noqa: E731
        self.norm1, self.norm2, self.norm3 = norm("rms"), norm("rms"), norm("layer")
        self.attn1 = MultiHeadAttention(*heads, out_features=c.hidden_size)
        self.attn2 = MultiHeadAttention(*heads, out_features=c.hidden_size)
        self.ff_in = dense(2 * c.intermediate_size, ("embed", "mlp"), self.dtype)
        self.ff_out = dense(c.hidden_size, ("mlp", "embed"), self.dtype)

    def key_value(self, text):
        return self.attn2.key_value(text)

    def __call__(self, x, kv, cond):
        h = self.norm1(x, cond)
        x = x + self.attn1(h, h)
        x = x + self.attn2.attend(self.norm2(x, cond), kv)
        h, gate = jnp.split(self.ff_in(self.norm3(x, cond)), 2, axis=-1)
        return x + self.ff_out(h * jax.nn.gelu(gate, approximate=False))


class CrossAttentionPair(nn.Module):
    """diffusers' SkipFFTransformerBlock: x += Attn1(RMS x, text); x += Attn2(RMS x, text),
    the text first mapped to the block's width by Dense(silu(text)) when the widths differ."""
    channels: int
    num_heads: int
    text_width: int
    dtype: Any = jnp.float32

    def setup(self):
        heads = (self.num_heads, self.channels // self.num_heads, self.dtype)
        if self.text_width != self.channels:
            self.kv_mapper = dense(self.channels, ("embed", "mlp"), self.dtype)
        self.norm1, self.norm2 = RMSNorm(1e-6, dtype=self.dtype), RMSNorm(1e-6, dtype=self.dtype)
        self.attn1 = MultiHeadAttention(*heads, out_features=self.channels)
        self.attn2 = MultiHeadAttention(*heads, out_features=self.channels)

    def key_value(self, text):
        if self.text_width != self.channels:
            text = self.kv_mapper(nn.silu(text))
        return self.attn1.key_value(text), self.attn2.key_value(text)

    def __call__(self, x, kv):
        x = x + self.attn1.attend(self.norm1(x), kv[0])
        return x + self.attn2.attend(self.norm2(x), kv[1])


class ConvNextBlock(nn.Module):
    """Depthwise 3x3 conv, RMSNorm, Dense 4x, GELU, global response norm, Dense back, residual;
    then modulated by (scale, shift) = Dense(silu(cond)). x [B,H,W,C]."""
    eps: float
    affine: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cond):
        C = x.shape[-1]
        kernel = self.param("depthwise", logical(_INIT, (None, None, "embed")), (3, 3, C))
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        H, W = x.shape[1:3]
        h = sum(padded[:, i:i + H, j:j + W] * kernel[i, j].astype(self.dtype)
                for i in range(3) for j in range(3))
        h = RMSNorm(self.eps, self.affine, self.dtype, name="norm")(h)
        h = jax.nn.gelu(dense(4 * C, ("embed", "mlp"), self.dtype, "linear_1")(h), approximate=False)
        # Global response normalisation (ConvNeXt-V2): each channel's L2 norm over the grid,
        # relative to the mean over channels.
        gamma = self.param("grn_gamma", logical(nn.initializers.zeros, ("mlp",)), (4 * C,))
        beta = self.param("grn_beta", logical(nn.initializers.zeros, ("mlp",)), (4 * C,))
        gx = jnp.sqrt(jnp.sum(jnp.square(h.astype(jnp.float32)), axis=(1, 2), keepdims=True))
        nx = (gx / (jnp.mean(gx, axis=-1, keepdims=True) + 1e-6)).astype(self.dtype)
        h = gamma.astype(self.dtype) * (h * nx) + beta.astype(self.dtype) + h
        x = x + dense(C, ("mlp", "embed"), self.dtype, "linear_2")(h)
        scale, shift = jnp.split(dense(2 * C, ("embed", "mlp"), self.dtype, "cond_mapper")(
            nn.silu(cond)), 2, axis=-1)
        return x * (1 + scale[:, None, None]) + shift[:, None, None]


class Resample(nn.Module):
    """RMSNorm, then diffusers' 2x2 stride-2 conv (`down`) or 2x2 stride-2 transposed conv (up).

    Both are per-patch matmuls: down gathers each 2x2 patch's channels, up scatters each pixel
    into a 2x2 patch. (Downsample2D pads one zero row and column first; a 2x2 stride-2 window
    over an even grid never reaches them.)
    """
    down: bool
    eps: float
    affine: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        B, H, W, C = x.shape
        x = RMSNorm(self.eps, self.affine, self.dtype, name="norm")(x)
        shape, names = (((2, 2, C, C), (None, None, "embed", "mlp")) if self.down
                        else ((C, 2, 2, C), ("embed", None, None, "mlp")))
        kernel = self.param("kernel", logical(_INIT, names), shape).astype(self.dtype)
        if self.down:
            patches = x.reshape(B, H // 2, 2, W // 2, 2, C)
            return jnp.einsum("bidjec,deco->bijo", patches, kernel)
        out = jnp.einsum("bijc,cdeo->bidjeo", x, kernel)
        return out.reshape(B, 2 * H, 2 * W, C)


class UVitBlock(nn.Module):
    """Optional downsampling, then `num_res_blocks` x (ConvNeXt block, cross-attention pair),
    then optional upsampling. x [B,H,W,C]."""
    config: UVitConfig
    downsample: bool
    upsample: bool
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        C, norm = c.block_out_channels, (c.layer_norm_eps, c.ln_elementwise_affine, self.dtype)
        if self.downsample:
            self.down = Resample(True, *norm)
        self.res_blocks = [ConvNextBlock(*norm) for _ in range(c.num_res_blocks)]
        self.attention_blocks = [CrossAttentionPair(C, c.block_num_heads, c.hidden_size, self.dtype)
                                 for _ in range(c.num_res_blocks)]
        if self.upsample:
            self.up = Resample(False, *norm)

    def key_value(self, text):
        return tuple(block.key_value(text) for block in self.attention_blocks)

    def __call__(self, x, kv, cond):
        if self.downsample:
            x = self.down(x)
        B, H, W, C = x.shape
        for res, attn, block_kv in zip(self.res_blocks, self.attention_blocks, kv):
            x = attn(res(x, cond).reshape(B, H * W, C), block_kv).reshape(B, H, W, C)
        return self.up(x) if self.upsample else x


class UVit2D(nn.Module):
    """tokens [B, h*w] int32 + text [B, L+1, D] -> logits [B, h*w, codebook_size] float32.

    Muse's model interface (`__call__(tokens, text, text_mask)`, `encode_context(text,
    text_mask)`, `logits`), so training, the sampler and editing run it unchanged. The text is
    packed the way `text.append_pooled` packs CLIP's output: the token states, then the pooled
    projection as one more position (both 768 wide in aMUSEd; a narrower one zero-padded),
    so the pooled embedding travels
    wherever the text does (caption dropout, the empty caption, negative prompts). The mask is
    not read: aMUSEd attends to every position. `micro_conds` are fixed per model (aMUSEd's
    pipeline defaults: a 256x256 (512x512) original, crop (0, 0), aesthetic score 6); `condition`
    takes them, and the pooled embedding, explicitly.
    """
    config: UVitConfig
    dtype: Any = jnp.float32
    mask_token_id: int | None = None  # None: vocab_size - 1, aMUSEd's
    micro_conds: tuple[float, ...] = (256.0, 256.0, 0.0, 0.0, 6.0)

    @property
    def mask_id(self) -> int:
        return self.config.vocab_size - 1 if self.mask_token_id is None else self.mask_token_id

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid (MaskedTransformer's field of that name: training reads it)."""
        return self.config.grid

    def setup(self):
        c, dt = self.config, self.dtype
        eps, affine = c.layer_norm_eps, c.ln_elementwise_affine
        self.encoder_proj = dense(c.hidden_size, ("text_embed", "embed"), dt)
        self.encoder_norm = RMSNorm(eps, affine, dt)
        self.cond_1 = dense(c.hidden_size, ("text_embed", "embed"), dt)
        self.cond_2 = dense(c.hidden_size, ("embed", "mlp"), dt)
        self.token_embed = nn.Embed(c.vocab_size, c.in_channels, dtype=dt,
                                    embedding_init=logical(_INIT, ("vocab", "embed")))
        self.embed_norm = RMSNorm(eps, affine, dt)
        self.embed_proj = dense(c.block_out_channels, ("embed", "mlp"), dt)
        self.down_block = UVitBlock(c, c.downsample, False, dt)
        self.to_hidden_norm = RMSNorm(eps, affine, dt)
        self.to_hidden = dense(c.hidden_size, ("mlp", "embed"), dt)
        self.layers = [TransformerLayer(c, dt) for _ in range(c.num_hidden_layers)]
        self.from_hidden_norm = RMSNorm(eps, affine, dt)
        self.from_hidden = dense(c.block_out_channels, ("embed", "mlp"), dt)
        self.up_block = UVitBlock(c, False, c.upsample, dt)
        self.head_proj = dense(c.in_channels, ("mlp", "embed"), dt)
        self.head_norm = RMSNorm(eps, affine, dt)
        self.head_logits = dense(c.codebook_size, ("embed", "vocab"), dt)

    def encode_context(self, text, text_mask=None) -> dict:
        """`condition` of packed text [B, L+1, D] (states, then the pooled embedding)."""
        del text_mask
        micro = jnp.broadcast_to(jnp.asarray(self.micro_conds, jnp.float32),
                                 (text.shape[0], len(self.micro_conds)))
        return self.condition(text[:, :-1], text[:, -1, :self.config.cond_embed_dim], micro)

    def condition(self, text, pooled, micro_conds) -> dict:
        """The conditioning the token pass reads, fixed over the decoding steps: `cond` [B,hidden]
        and the text's keys and values for every attention layer. text [B,L,D], pooled [B,P],
        micro_conds [B,5] as diffusers' UVit2DModel takes them."""
        c = self.config
        text = self.encoder_norm(self.encoder_proj(text.astype(self.dtype)))
        micro = sinusoidal_embedding(micro_conds.reshape(-1), c.micro_cond_encode_dim)
        micro = micro.reshape(micro_conds.shape[0], -1)
        cond = jnp.concatenate([pooled.astype(jnp.float32), micro], axis=-1).astype(self.dtype)
        cond = self.cond_2(nn.silu(self.cond_1(cond)))
        return {"cond": cond, "down": self.down_block.key_value(text),
                "layers": tuple(layer.key_value(text) for layer in self.layers),
                "up": self.up_block.key_value(text)}

    def logits(self, tokens, context: dict, deterministic: bool = True):
        """The token pass: tokens [B, h*w] -> logits [B, h*w, codebook_size] float32."""
        del deterministic  # no dropout: see the module docstring
        (h, w), cond = self.config.grid, context["cond"]
        B = tokens.shape[0]
        x = self.embed_proj(self.embed_norm(self.token_embed(tokens.reshape(B, h, w))))
        x = self.down_block(x, context["down"], cond)
        _, H, W, C = x.shape
        x = self.to_hidden(self.to_hidden_norm(x.reshape(B, H * W, C)))
        for layer, kv in zip(self.layers, context["layers"]):
            x = layer(x, kv, cond)
        x = self.from_hidden(self.from_hidden_norm(x)).reshape(B, H, W, C)
        x = self.up_block(x, context["up"], cond)
        x = self.head_logits(self.head_norm(self.head_proj(x)))
        return x.reshape(B, h * w, -1).astype(jnp.float32)

    def __call__(self, tokens, text, text_mask=None, *, deterministic: bool = True):
        return self.logits(tokens, self.encode_context(text, text_mask), deterministic)


def params_shape(model: UVit2D) -> dict:
    """`model`'s params as (boxed) ShapeDtypeStructs: `init` traced on dummy inputs, never run
    (no weights are made), for checking imported weights against the config's shapes."""
    c = model.config
    tokens = jnp.zeros((1, c.sample_size ** 2), jnp.int32)
    packed = jnp.zeros((1, 2, c.encoder_hidden_size), jnp.float32)  # one state + the pooled
    return jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, packed)["params"])


def params_from_diffusers(get: Callable[[str], np.ndarray], config: UVitConfig) -> dict:
    """`UVit2D` params from a diffusers UVit2DModel state dict; `get(name)` -> numpy array."""
    c = config

    def linear(name):  # torch Linear [out, in] (or a 1x1 conv [out, in, 1, 1]) -> [in, out]
        w = get(f"{name}.weight")
        return {"kernel": w.reshape(w.shape[0], -1).T}

    def scale(name):
        return {"scale": get(f"{name}.weight")} if c.ln_elementwise_affine else {}

    def attention(name, heads, width):
        k = width // heads
        out = {n: {"kernel": get(f"{name}.to_{n[0]}.weight").T.reshape(-1, heads, k)}
               for n in ("query", "key", "value")}
        out["out"] = {"kernel": get(f"{name}.to_out.0.weight").T.reshape(heads, k, width)}
        return out

    def block(name, down, up):
        p = {}
        if down:
            p["down"] = {"norm": scale(f"{name}.downsample.norm"),
                         "kernel": get(f"{name}.downsample.conv.weight").transpose(2, 3, 1, 0)}
        if up:
            p["up"] = {"norm": scale(f"{name}.upsample.norm"),
                       "kernel": get(f"{name}.upsample.conv.weight").transpose(0, 2, 3, 1)}
        for i in range(c.num_res_blocks):
            r = f"{name}.res_blocks.{i}"
            p[f"res_blocks_{i}"] = {
                "depthwise": get(f"{r}.depthwise.weight")[:, 0].transpose(1, 2, 0),
                "norm": scale(f"{r}.norm"), "linear_1": linear(f"{r}.channelwise_linear_1"),
                "grn_gamma": get(f"{r}.channelwise_norm.gamma").reshape(-1),
                "grn_beta": get(f"{r}.channelwise_norm.beta").reshape(-1),
                "linear_2": linear(f"{r}.channelwise_linear_2"),
                "cond_mapper": linear(f"{r}.cond_embeds_mapper")}
            a = f"{name}.attention_blocks.{i}"
            C = c.block_out_channels
            p[f"attention_blocks_{i}"] = {
                "norm1": {"scale": get(f"{a}.norm1.weight")}, "norm2": {"scale": get(f"{a}.norm2.weight")},
                "attn1": attention(f"{a}.attn1", c.block_num_heads, C),
                "attn2": attention(f"{a}.attn2", c.block_num_heads, C)}
            if c.hidden_size != C:
                p[f"attention_blocks_{i}"]["kv_mapper"] = linear(f"{a}.kv_mapper")
        return p

    params = {
        "encoder_proj": linear("encoder_proj"), "encoder_norm": scale("encoder_proj_layer_norm"),
        "cond_1": linear("cond_embed.linear_1"), "cond_2": linear("cond_embed.linear_2"),
        "token_embed": {"embedding": get("embed.embeddings.weight")},
        "embed_norm": scale("embed.layer_norm"), "embed_proj": linear("embed.conv"),
        "down_block": block("down_block", c.downsample, False),
        "to_hidden_norm": scale("project_to_hidden_norm"), "to_hidden": linear("project_to_hidden"),
        "from_hidden_norm": scale("project_from_hidden_norm"),
        "from_hidden": linear("project_from_hidden"),
        "up_block": block("up_block", False, c.upsample),
        "head_proj": linear("mlm_layer.conv1"), "head_norm": scale("mlm_layer.layer_norm"),
        "head_logits": linear("mlm_layer.conv2"),
    }
    for i in range(c.num_hidden_layers):
        t = f"transformer_layers.{i}"
        params[f"layers_{i}"] = {
            **{f"norm{j}": {"linear": linear(f"{t}.norm{j}.linear"), "norm": scale(f"{t}.norm{j}.norm")}
               for j in (1, 2, 3)},
            "attn1": attention(f"{t}.attn1", c.num_attention_heads, c.hidden_size),
            "attn2": attention(f"{t}.attn2", c.num_attention_heads, c.hidden_size),
            "ff_in": linear(f"{t}.ff.net.0.proj"), "ff_out": linear(f"{t}.ff.net.2"),
        }
    return _prune(params)


class _Name(str):
    """A diffusers weight name standing in for its tensor: every reshape, transpose and index
    `params_from_diffusers` applies returns it unchanged, so the tree it builds of these names
    says which diffusers weight each parameter is (`diffusers_names`)."""
    shape = (-1,)
    T = property(lambda self: self)

    def reshape(self, *args):
        return self

    transpose = reshape

    def __getitem__(self, index):
        return self


def diffusers_names(config: UVitConfig) -> dict[tuple[str, ...], str]:
    """{`UVit2D` params path: the diffusers state-dict name it is read from}, the mapping of
    `params_from_diffusers` itself (so a LoRA file's module names find their kernels without a
    second copy of it)."""
    import flax

    return flax.traverse_util.flatten_dict(params_from_diffusers(_Name, config))


def _prune(tree: dict) -> dict:
    """Drops the empty entries of norms without a scale (`ln_elementwise_affine=False`)."""
    out = {}
    for k, v in tree.items():
        v = _prune(v) if isinstance(v, dict) else v
        if not (isinstance(v, dict) and not v):
            out[k] = v
    return out
