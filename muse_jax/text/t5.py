"""Flax T5 encoder: v1.0 (ReLU) and v1.1 / Flan-T5 (gated GELU), loading Hugging Face weights.

Muse conditions on the token embeddings of T5-XXL's encoder. transformers 5 no longer ships
Flax models, and a port must in any case name each weight's dimensions with the logical
axes of `parallel.LOGICAL_AXIS_RULES`, so the 4.7B-parameter XXL encoder shards over
`fsdp`/`tensor` with the same table as the Muse transformers instead of sitting whole on
every device (a known way to run out of memory at XXL).

The arithmetic follows transformers' `T5EncoderModel` exactly (no 1/sqrt(d) attention
scale, RMS norm without mean or bias, one relative-position bias table shared by all
layers, the padding mask added to that bias), so imported checkpoints give the same hidden
states; tests/test_text_t5.py holds the two to < 1e-4 in float32. Norms and softmax run in
float32 whatever the compute dtype.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import flax.linen as nn
from flax.linen import with_logical_partitioning as logical
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.models.norms import RMSNorm
from muse_jax.text import hf_import

@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    activation: str = "relu"  # one of hf_import.ACTIVATIONS
    gated: bool = False  # v1.1 / Flan: act(wi_0 x) * wi_1 x

    @classmethod
    def from_hf(cls, hf: dict) -> "T5Config":
        """From a transformers `config.json`, with HF's reading of `feed_forward_proj`."""
        proj = hf.get("feed_forward_proj", "relu")
        parts = proj.split("-")
        activation = "gelu_new" if proj == "gated-gelu" else parts[-1]
        known = activation in hf_import.ACTIVATIONS
        if not known or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise hf_import.CheckpointError(
                f"T5 feed_forward_proj {proj!r} is not supported (known: relu, gated-gelu, "
                f"gelu, gated-silu, ...)")
        return cls(
            vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_kv=hf["d_kv"], d_ff=hf["d_ff"],
            num_layers=hf["num_layers"], num_heads=hf["num_heads"],
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
            activation=activation, gated=parts[0] == "gated")


# google/t5-v1_1-xxl and google/flan-t5-xxl: the encoder Muse uses.
T5_XXL = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                  num_heads=64, activation="gelu_new", gated=True)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """[length, length] int32 bucket of (key - query) for bidirectional attention.

    Computed in float32 like transformers (and mesh-tensorflow) so the bucket boundaries,
    where the log lands on an integer, fall on the same side.
    """
    pos = np.arange(length)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        scaled = (np.log(rel.astype(np.float32) / np.float32(max_exact))
                  / np.float32(math.log(max_distance / max_exact))
                  * np.float32(half - max_exact))
    large = max_exact + np.where(rel < max_exact, 0, scaled).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


class T5Attention(nn.Module):
    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        c = self.config
        init = nn.initializers.normal(c.d_model ** -0.5)

        def project(name):
            return nn.DenseGeneral((c.num_heads, c.d_kv), use_bias=False, dtype=self.dtype,
                                   param_dtype=self.param_dtype, name=name,
                                   kernel_init=logical(init, ("embed", "heads", "kv")))(x)

        q, k, v = project("query"), project("key"), project("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) + bias
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(c.d_model, axis=(-2, -1), use_bias=False, dtype=self.dtype,
                               param_dtype=self.param_dtype, name="out",
                               kernel_init=logical(init, ("heads", "kv", "embed")))(out)


class T5MLP(nn.Module):
    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config

        def dense(features, names, name):
            return nn.Dense(features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                            kernel_init=logical(nn.initializers.normal(c.d_model ** -0.5), names),
                            name=name)

        act = hf_import.ACTIVATIONS[c.activation]
        if c.gated:
            h = act(dense(c.d_ff, ("embed", "mlp"), "wi_0")(x)) * dense(c.d_ff, ("embed", "mlp"), "wi_1")(x)
        else:
            h = act(dense(c.d_ff, ("embed", "mlp"), "wi")(x))
        return dense(c.d_model, ("mlp", "embed"), "wo")(h)


class T5Block(nn.Module):
    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        eps = self.config.layer_norm_epsilon
        x = x + T5Attention(self.config, name="attn", **kw)(RMSNorm(eps, name="attn_norm", **kw)(x), bias)
        return x + T5MLP(self.config, name="mlp", **kw)(RMSNorm(eps, name="mlp_norm", **kw)(x))


class T5Encoder(nn.Module):
    """ids [B,L] int, mask [B,L] bool -> hidden states [B,L,d_model] in `dtype`.

    Padded positions get hidden states too (as in transformers); callers mask them.
    """
    config: T5Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids, mask):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Embed(c.vocab_size, c.d_model, name="token_embed",
                     embedding_init=logical(nn.initializers.normal(1.0), ("vocab", "embed")), **kw)(ids)
        table = self.param("relpos_bias", logical(nn.initializers.normal(c.d_model ** -0.5),
                                                       ("relpos_buckets", "heads")),
                           (c.relative_attention_num_buckets, c.num_heads), self.param_dtype)
        buckets = relative_position_buckets(ids.shape[1], c.relative_attention_num_buckets,
                                            c.relative_attention_max_distance)
        bias = jnp.transpose(table.astype(jnp.float32)[buckets], (2, 0, 1))[None]  # [1,H,L,L]
        bias = bias + jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)
        for i in range(c.num_layers):
            x = T5Block(c, name=f"layers_{i}", **kw)(x, bias)
        return RMSNorm(c.layer_norm_epsilon, name="final_norm", **kw)(x)


def params_from_hf(weights: hf_import.Weights, config: T5Config, dtype=np.float32) -> dict:
    """Maps a transformers T5 state dict (encoder part) onto `T5Encoder`'s parameter tree."""
    H, K, D = config.num_heads, config.d_kv, config.d_model

    def get(name):
        return weights.get(name, dtype)

    embed = "shared.weight" if "shared.weight" in weights else "encoder.embed_tokens.weight"
    params: dict[str, Any] = {
        "token_embed": {"embedding": get(embed)},
        "relpos_bias": get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        "final_norm": {"scale": get("encoder.final_layer_norm.weight")},
    }
    for i in range(config.num_layers):
        pre = f"encoder.block.{i}.layer"
        attn = {n: {"kernel": get(f"{pre}.0.SelfAttention.{hf}.weight").T.reshape(D, H, K)}
                for n, hf in (("query", "q"), ("key", "k"), ("value", "v"))}
        attn["out"] = {"kernel": get(f"{pre}.0.SelfAttention.o.weight").T.reshape(H, K, D)}
        names = ("wi_0", "wi_1", "wo") if config.gated else ("wi", "wo")
        mlp = {n: {"kernel": get(f"{pre}.1.DenseReluDense.{n}.weight").T} for n in names}
        params[f"layers_{i}"] = {
            "attn_norm": {"scale": get(f"{pre}.0.layer_norm.weight")}, "attn": attn,
            "mlp_norm": {"scale": get(f"{pre}.1.layer_norm.weight")}, "mlp": mlp,
        }
    return params


def load(path: str | Path, dtype=jnp.float32) -> tuple[T5Encoder, dict]:
    """(module, params) from a local Hugging Face T5 directory; params cast to `dtype`.

    The encoder is frozen, so no float32 master copy is kept: bf16 halves T5-XXL's 19 GB.
    """
    path = hf_import.check_dir(path, "T5", tokenizer=False)
    hf = hf_import.read_config(path)
    if hf.get("model_type", "t5") not in ("t5", "mt5"):
        raise hf_import.CheckpointError(f"{path}/config.json has model_type {hf.get('model_type')!r}, "
                                        "not a T5 checkpoint")
    config = T5Config.from_hf(hf)
    params = params_from_hf(hf_import.Weights(path), config, np.dtype(dtype))
    return T5Encoder(config, dtype=dtype, param_dtype=dtype), params


def init_fn(config: T5Config, dtype=jnp.float32, length: int = 8):
    """A no-argument function returning boxed random params, for `parallel.abstract_sharded`."""
    module = T5Encoder(config, dtype=dtype, param_dtype=dtype)
    ids, mask = jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), bool)
    return lambda: module.init(jax.random.key(0), ids, mask)["params"]
