"""CLIP's transformer encoder stack, shared by its text tower (text/clip.py) and vision tower.

Both CLIP towers are the same pre-norm transformer (transformers' `CLIPEncoderLayer`: LayerNorm,
biased multi-head self-attention, LayerNorm, fc1 -> quick-GELU -> fc2); they differ only in
what goes in (token + position embeddings with a causal mask, or patch embeddings with a class
token and no mask) and how the output is pooled. `CLIPEncoder` is that stack, returning every
layer's hidden states as transformers' `output_hidden_states=True` does, because aMUSEd
cross-attends to the penultimate layer's states while the pooled embedding comes from the last.

The attention core is models/attention.py's `dot_product_attention` (softmax in float32); the
projections are CLIP's own because they carry biases, which `MultiHeadAttention`'s do not.
Kernels are explicit 3-D arrays with logical axis names (not `nn.DenseGeneral`, whose
flattened init breaks a sharded init: see models/attention.py), so the rules table in
muse_jax/parallel.py shards CLIP-L as it shards the Muse transformers.

`encoder_params_from_hf` maps a transformers state dict's `...encoder.layers.{i}` tensors onto
this tree, for either tower.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
from flax.linen import with_logical_partitioning as logical
import jax.numpy as jnp
import numpy as np

from muse_jax.models.activations import ACTIVATIONS
from muse_jax.models.attention import dot_product_attention


@dataclasses.dataclass(frozen=True)
class CLIPEncoderConfig:
    """The encoder stack's numbers, as transformers' CLIPTextConfig / CLIPVisionConfig name them."""
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-5
    activation: str = "quick_gelu"  # one of models/activations.ACTIVATIONS

    @classmethod
    def from_hf(cls, hf: dict) -> "CLIPEncoderConfig":
        act = hf.get("hidden_act", "quick_gelu")
        if act not in ACTIVATIONS:
            raise ValueError(f"CLIP hidden_act {act!r} is not supported (known: {', '.join(ACTIVATIONS)})")
        return cls(hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                   num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
                   layer_norm_eps=hf.get("layer_norm_eps", 1e-5), activation=act)


def layer_norm(eps: float, name: str, dtype, param_dtype) -> nn.LayerNorm:
    """PyTorch's LayerNorm, with the two-pass variance (the one-pass one loses digits)."""
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name, dtype=dtype,
                        param_dtype=param_dtype,
                        scale_init=logical(nn.initializers.ones, ("embed",)),
                        bias_init=logical(nn.initializers.zeros, ("embed",)))


class _Linear(nn.Module):
    """x [..., in] -> [..., *shape] by a kernel [in, *shape] and a bias [*shape], both named."""
    shape: tuple[int, ...]
    names: tuple[str, ...]  # logical names of (in, *shape)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    in_dims: int = 1  # trailing input dimensions contracted

    @nn.compact
    def __call__(self, x):
        in_shape = x.shape[x.ndim - self.in_dims:]
        fan_in = int(np.prod(in_shape))
        kernel = self.param("kernel", logical(nn.initializers.normal(fan_in ** -0.5), self.names),
                            (*in_shape, *self.shape), self.param_dtype)
        bias = self.param("bias", logical(nn.initializers.zeros, self.names[self.in_dims:]),
                          self.shape, self.param_dtype)
        y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.in_dims)
        return y + bias.astype(self.dtype)


class CLIPAttention(nn.Module):
    """Biased multi-head self-attention; `mask` bool broadcastable to [B,H,L,L], True = attend."""
    config: CLIPEncoderConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        heads = (c.num_heads, c.hidden_size // c.num_heads)
        q, k, v = (_Linear(heads, ("embed", "heads", "kv"), name=n, **kw)(x)
                   for n in ("query", "key", "value"))
        out = dot_product_attention(q, k, v, mask)
        return _Linear((c.hidden_size,), ("heads", "kv", "embed"), in_dims=2, name="out", **kw)(out)


class CLIPMLP(nn.Module):
    config: CLIPEncoderConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _Linear((c.intermediate_size,), ("embed", "mlp"), name="fc1", **kw)(x)
        h = ACTIVATIONS[c.activation](h)
        return _Linear((c.hidden_size,), ("mlp", "embed"), name="fc2", **kw)(h)


class CLIPEncoderLayer(nn.Module):
    config: CLIPEncoderConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x + CLIPAttention(c, name="attn", **kw)(layer_norm(c.layer_norm_eps, "attn_norm", **kw)(x), mask)
        return x + CLIPMLP(c, name="mlp", **kw)(layer_norm(c.layer_norm_eps, "mlp_norm", **kw)(x))


class CLIPEncoder(nn.Module):
    """x [B,L,D] -> (x, after layer 1, ..., after the last layer): `num_layers + 1` arrays.

    The same tuple as transformers' `hidden_states` output, so `[-2]` is the penultimate
    layer's output that aMUSEd and Stable Diffusion variants condition on. No final norm:
    the towers apply their own (text: `final_layer_norm`, vision: `post_layernorm` on CLS).
    """
    config: CLIPEncoderConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        states = [x]
        for i in range(self.config.num_layers):
            x = CLIPEncoderLayer(self.config, name=f"layers_{i}", dtype=self.dtype,
                                 param_dtype=self.param_dtype)(x, mask)
            states.append(x)
        return tuple(states)


def encoder_params_from_hf(get: Callable[[str], np.ndarray], prefix: str,
                           config: CLIPEncoderConfig) -> dict:
    """`CLIPEncoder` params from tensors named `{prefix}.layers.{i}...` (e.g. prefix
    "text_model.encoder" or "vision_model.encoder"); `get(name)` returns a numpy array."""
    H, D = config.num_heads, config.hidden_size
    K = D // H

    def linear(name, in_shape, out_shape):  # torch Linear weight is [out, in]
        return {"kernel": get(f"{name}.weight").T.reshape(*in_shape, *out_shape),
                "bias": get(f"{name}.bias").reshape(out_shape)}

    def norm(name):
        return {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}

    params = {}
    for i in range(config.num_layers):
        pre = f"{prefix}.layers.{i}"
        attn = {n: linear(f"{pre}.self_attn.{hf}", (D,), (H, K))
                for n, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))}
        attn["out"] = linear(f"{pre}.self_attn.out_proj", (H, K), (D,))
        params[f"layers_{i}"] = {
            "attn_norm": norm(f"{pre}.layer_norm1"), "attn": attn,
            "mlp_norm": norm(f"{pre}.layer_norm2"),
            "mlp": {"fc1": linear(f"{pre}.mlp.fc1", (D,), (config.intermediate_size,)),
                    "fc2": linear(f"{pre}.mlp.fc2", (config.intermediate_size,), (D,))},
        }
    return params


# --- Vision tower (CLIP score) ---------------------------------------------------------------

# CLIP's pixel normalisation (the CLIPImageProcessor's image_mean / image_std).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    encoder: CLIPEncoderConfig = CLIPEncoderConfig(hidden_size=1024, num_layers=24, num_heads=16,
                                                   intermediate_size=4096)
    image_size: int = 224
    patch_size: int = 14
    projection_dim: int = 768

    @classmethod
    def from_hf(cls, hf: dict) -> "CLIPVisionConfig":
        """From a full `CLIPConfig` config.json (its `vision_config`) or a `CLIPVisionConfig`."""
        projection_dim = hf.get("projection_dim", 512)
        if hf.get("model_type") == "clip":
            hf = hf["vision_config"]
        return cls(encoder=CLIPEncoderConfig.from_hf(hf), image_size=hf.get("image_size", 224),
                   patch_size=hf.get("patch_size", 32), projection_dim=projection_dim)


class CLIPVisionTransformer(nn.Module):
    """pixel_values [B,S,S,3] (CLIP-normalised, S = image_size) -> image embedding
    [B, projection_dim]: transformers' `CLIPModel.get_image_features` (class token, after
    `post_layernorm`, through `visual_projection`), unnormalised.

    The patch embedding is a strided conv without bias; a learned class token is prepended and
    learned absolute positions added; then `pre_layrnorm` (transformers' spelling), the shared
    `CLIPEncoder` with no mask, and `post_layernorm` on the class token.
    """
    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        D, p = c.encoder.hidden_size, c.patch_size
        init = nn.initializers.normal(0.02)
        kernel = self.param("patch_embed", logical(init, (None, None, None, "embed")),
                            (p, p, 3, D), self.param_dtype)
        x = jax.lax.conv_general_dilated(pixel_values.astype(self.dtype),
                                         kernel.astype(self.dtype), (p, p), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = x.reshape(x.shape[0], -1, D)
        cls = self.param("class_embed", logical(init, ("embed",)), (D,), self.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, D)), x], 1)
        pos = self.param("position_embed", logical(init, (None, "embed")),
                         ((c.image_size // p) ** 2 + 1, D), self.param_dtype)
        x = layer_norm(c.encoder.layer_norm_eps, "pre_norm", **kw)(x + pos.astype(self.dtype))
        x = CLIPEncoder(c.encoder, name="encoder", **kw)(x)[-1]
        pooled = layer_norm(c.encoder.layer_norm_eps, "post_norm", **kw)(x[:, 0])
        proj = self.param("projection", logical(nn.initializers.normal(D ** -0.5), ("embed", None)),
                          (D, c.projection_dim), self.param_dtype)
        return pooled @ proj.astype(self.dtype)


def vision_params_from_hf(get: Callable[[str], np.ndarray], config: CLIPVisionConfig) -> dict:
    """`CLIPVisionTransformer` params from a transformers `CLIPModel` state dict (`get(name)`
    returns a numpy array): `vision_model.*` and `visual_projection.weight`."""
    pre = "vision_model"

    def norm(name):
        return {"scale": get(f"{pre}.{name}.weight"), "bias": get(f"{pre}.{name}.bias")}

    return {
        "patch_embed": np.transpose(get(f"{pre}.embeddings.patch_embedding.weight"), (2, 3, 1, 0)),
        "class_embed": get(f"{pre}.embeddings.class_embedding"),
        "position_embed": get(f"{pre}.embeddings.position_embedding.weight"),
        "pre_norm": norm("pre_layrnorm"),
        "encoder": encoder_params_from_hf(get, f"{pre}.encoder", config.encoder),
        "post_norm": norm("post_layernorm"),
        "projection": get("visual_projection.weight").T,
    }
