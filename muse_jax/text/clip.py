"""Flax CLIP text tower (transformers' `CLIPTextModelWithProjection`): aMUSEd's text encoder.

aMUSEd (arXiv 2401.01808) conditions on CLIP-L/14's text tower in two ways: its image tokens
cross-attend to the *penultimate* layer's hidden states (`hidden_states[-2]`, before the final
LayerNorm), and the *pooled* embedding (the final-normed state at the end-of-text token, through
`text_projection`) joins the micro-conditioning vector. `CLIPTextEncoder.__call__` returns the
first, as the other encoders return their token states, so it drops into `config.text.encoder`;
`with_pooled` returns both from one pass.

The tower is causal, so a real token never sees the padding after it. The padding mask is
therefore not applied: aMUSEd's pipeline passes none either (it pads every prompt to 77 tokens
and cross-attends to all of them, padding included), and applying one would change only the
padded positions' states, which aMUSEd was trained to read. text/encoder.py accordingly reports
every position of a CLIP prompt as valid.

The encoder stack is models/clip.py's, shared with the vision tower.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
from flax.linen import with_logical_partitioning as logical
import jax.numpy as jnp
import numpy as np

from muse_jax.models import clip as clip_layers
from muse_jax.text import hf_import

PREFIX = "text_model"


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    encoder: clip_layers.CLIPEncoderConfig = clip_layers.CLIPEncoderConfig()
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    projection_dim: int = 768
    eos_token_id: int = 49407  # 2 in configs older than transformers PR 24773: see `pooled_index`

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size

    @classmethod
    def from_hf(cls, hf: dict) -> "CLIPTextConfig":
        """From a `CLIPTextConfig` config.json, or a full `CLIPConfig`'s `text_config`."""
        if hf.get("model_type") == "clip":
            hf = {**hf["text_config"], "projection_dim": hf.get("projection_dim", 512)}
        try:
            encoder = clip_layers.CLIPEncoderConfig.from_hf(hf)
        except ValueError as e:
            raise hf_import.CheckpointError(str(e)) from None
        return cls(encoder=encoder, vocab_size=hf["vocab_size"],
                   max_position_embeddings=hf.get("max_position_embeddings", 77),
                   projection_dim=hf.get("projection_dim", 512),
                   eos_token_id=hf.get("eos_token_id", 49407))


# openai/clip-vit-large-patch14's text tower: aMUSEd's text_encoder/.
CLIP_L14_TEXT = CLIPTextConfig(
    encoder=clip_layers.CLIPEncoderConfig(hidden_size=768, num_layers=12, num_heads=12,
                                          intermediate_size=3072),
    projection_dim=768)


def pooled_index(ids, eos_token_id: int):
    """The position the pooled embedding is read at: the first end-of-text token.

    Configs with `eos_token_id == 2` predate transformers' fix for it and take the largest id
    instead (the end-of-text token is the largest in CLIP's original vocabulary); transformers
    keeps that reading for them, and so does this.
    """
    if eos_token_id == 2:
        return jnp.argmax(ids, axis=-1)
    return jnp.argmax(ids == eos_token_id, axis=-1)


class CLIPTextEncoder(nn.Module):
    """ids [B,L] int (mask [B,L] accepted, not applied: see the module docstring) ->
    penultimate hidden states [B,L,hidden]; `with_pooled` adds the projection [B,projection_dim]."""
    config: CLIPTextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = nn.initializers.normal(0.02)
        self.token_embed = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=logical(
            init, ("vocab", "embed")), **kw)
        self.position_embed = self.param("position_embed", logical(init, (None, "embed")),
                                         (c.max_position_embeddings, c.hidden_size), self.param_dtype)
        self.encoder = clip_layers.CLIPEncoder(c.encoder, **kw)
        self.final_norm = clip_layers.layer_norm(c.encoder.layer_norm_eps, None, **kw)
        self.projection = self.param("projection", logical(
            nn.initializers.normal(c.hidden_size ** -0.5), ("embed", None)),
            (c.hidden_size, c.projection_dim), self.param_dtype)

    def _states(self, ids):
        L = ids.shape[1]
        x = self.token_embed(ids) + self.position_embed[:L].astype(self.dtype)[None]
        causal = jnp.tril(jnp.ones((L, L), bool))[None, None]
        return self.encoder(x, causal)

    def __call__(self, ids, mask=None):
        # Through with_pooled so init creates every parameter; jit drops the unused pooling.
        return self.with_pooled(ids, mask)[0]

    def with_pooled(self, ids, mask=None):
        """(penultimate hidden states [B,L,hidden], pooled projection [B,projection_dim])."""
        states = self._states(ids)
        last = self.final_norm(states[-1])
        pooled = last[jnp.arange(ids.shape[0]), pooled_index(ids, self.config.eos_token_id)]
        return states[-2], pooled @ self.projection.astype(self.dtype)


def params_from_hf(weights: hf_import.Weights, config: CLIPTextConfig, dtype=np.float32) -> dict:
    """Maps a transformers CLIPTextModelWithProjection (or CLIPModel) state dict."""
    def get(name):
        return weights.get(name, dtype)

    if "text_projection.weight" not in weights:
        raise hf_import.CheckpointError(
            f"{weights.path} has no text_projection.weight: a CLIPTextModel without projection; "
            "expected a CLIPTextModelWithProjection (or CLIPModel) checkpoint")
    return {
        "token_embed": {"embedding": get(f"{PREFIX}.embeddings.token_embedding.weight")},
        "position_embed": get(f"{PREFIX}.embeddings.position_embedding.weight"),
        "encoder": clip_layers.encoder_params_from_hf(get, f"{PREFIX}.encoder", config.encoder),
        "final_norm": {"scale": get(f"{PREFIX}.final_layer_norm.weight"),
                       "bias": get(f"{PREFIX}.final_layer_norm.bias")},
        "projection": get("text_projection.weight").T,
    }


def load(path: str | Path, dtype=jnp.float32) -> tuple[CLIPTextEncoder, dict]:
    """(module, params) from a local CLIP text checkpoint directory (aMUSEd's text_encoder/)."""
    path = hf_import.check_dir(path, "CLIP text", tokenizer=False)
    hf = hf_import.read_config(path)
    if hf.get("model_type", "clip_text_model") not in ("clip_text_model", "clip"):
        raise hf_import.CheckpointError(f"{path}/config.json has model_type {hf.get('model_type')!r}, "
                                        "not a CLIP text checkpoint")
    config = CLIPTextConfig.from_hf(hf)
    params = params_from_hf(hf_import.Weights(path), config, np.dtype(dtype))
    return CLIPTextEncoder(config, dtype=dtype, param_dtype=dtype), params
