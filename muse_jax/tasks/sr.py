"""Super-resolution stage (Muse 2.4): predict masked high-res tokens from the rest, the low-res
tokens of the same image, and the text.

Training is the base stage's (tasks/base.py: arccos mask rates, caption dropout, loss on the
masked positions, EMA), built from its parts: the same frozen tokenizer and text encoder
(`base.load_frozen`), a `base.MaskedTokenTraining` of the SR model, and `base.MaskedTokenSteps`
with a `LowResCondition`, the one input the base stage lacks. Each image is tokenised twice by
frozen VQGANs: at `data.image_size` by `tokenizer.workdir` (the targets), and box-downsampled to
`low_res.image_size` by the base stage's tokenizer (the condition), so the condition is what the
base model produces at sampling time. Caption dropout replaces the text only; the low-res tokens
stay, so guidance's unconditional branch at sampling time is "this low-res image, no caption".
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from muse_jax import parallel
from muse_jax.config import ConfigError
from muse_jax.models.transformer import SuperResTransformer
from muse_jax.tasks import base
from muse_jax.tasks import vqgan as vqgan_task


def build_model(config) -> SuperResTransformer:
    m = config.model
    return SuperResTransformer(
        codebook_size=m.codebook_size, grid=(m.grid_size, m.grid_size),
        low_res_codebook_size=m.low_res_codebook_size,
        low_res_grid=(m.low_res_grid_size, m.low_res_grid_size), width=m.width, depth=m.depth,
        low_res_depth=m.low_res_depth, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
        window=m.attention_window, dropout=m.dropout, dtype=jnp.dtype(m.dtype), remat=m.remat,
        low_res_skip=m.get("low_res_skip", False))  # absent from runs before the key existed


def downsample(images, size: int):
    """Box filter: [B,S,S,C] -> [B,size,size,C] for S a multiple of `size`: each low-res pixel is
    the mean of its S/size x S/size patch, as an anti-aliased render at `size` would be."""
    b, s, _, ch = images.shape
    f = s // size
    return images.reshape(b, size, f, size, f, ch).mean(axis=(2, 4))


@dataclasses.dataclass(frozen=True)
class LowResCondition:
    """The low-res tokens of each batch image (a `base.Condition`): downsampled to `image_size`
    and tokenised by the frozen low-res `tokenizer`, whose placed params `weights` holds."""
    tokenizer: Any
    weights: dict
    image_size: int
    grid: int
    high_res_size: int

    @classmethod
    def load(cls, config, mesh) -> LowResCondition:
        c = config
        model, params, vq_config = vqgan_task.load_tokenizer(c.low_res.tokenizer_workdir)
        factor = model.downsample_factor
        if vq_config.model.codebook_size != c.model.low_res_codebook_size:
            raise ConfigError(f"model.low_res_codebook_size {c.model.low_res_codebook_size} "
                              f"differs from the low-res tokenizer's "
                              f"{vq_config.model.codebook_size} ({c.low_res.tokenizer_workdir})")
        if c.low_res.image_size != c.model.low_res_grid_size * factor:
            raise ConfigError(f"model.low_res_grid_size {c.model.low_res_grid_size} does not "
                              f"match low_res.image_size {c.low_res.image_size} / the low-res "
                              f"tokenizer's factor {factor}")
        weights = {"low_res_tokenizer": parallel.put(params, parallel.replicated(mesh))}
        return cls(model, weights, c.low_res.image_size, c.model.low_res_grid_size,
                   c.data.image_size)

    def inputs(self, batch, frozen) -> tuple:
        low = downsample(batch["image"], self.image_size)
        ids = self.tokenizer.apply({"params": frozen["low_res_tokenizer"]}, low,
                                   method=self.tokenizer.encode)
        return (jax.lax.stop_gradient(ids.reshape(ids.shape[0], -1)),)

    def images(self, conditioning, frozen) -> list:
        """The low-res input, decoded by the low-res tokenizer and upsampled to the high-res size."""
        low = base.render_tokens(self.tokenizer, frozen["low_res_tokenizer"], conditioning[0],
                                 self.grid)
        size = self.high_res_size
        return [jax.image.resize(low, (low.shape[0], size, size, low.shape[-1]), "nearest")]


class SRTask:
    """The SR stage's `Task` (tasks/protocol.py)."""

    def __init__(self, config):
        self.config = config
        self.model = build_model(config)
        low_res = jnp.zeros((1, config.model.low_res_grid_size ** 2), jnp.int32)
        self.training = base.MaskedTokenTraining(config, self.model, (low_res,))
        self.uses_captions = not config.data.train_text_embeddings  # raw captions in the batches

    def check_config(self) -> None:
        base.check_config(self.config)
        c = self.config
        if c.data.train_tokens or c.data.eval_tokens:
            raise ConfigError("the sr stage tokenises images itself (it needs their low-res tokens "
                              "too): data.train_tokens and data.eval_tokens must be empty")
        if c.low_res.image_size <= 0 or c.data.image_size % c.low_res.image_size:
            raise ConfigError(f"low_res.image_size {c.low_res.image_size} must divide "
                              f"data.image_size {c.data.image_size}")
        if c.model.get("patch_size", 1) != 1:
            raise ConfigError(f"model.patch_size {c.model.patch_size}: the sr stage's transformer "
                              f"has one position a token (patch_size 1)")
        window = c.model.attention_window
        if window and (c.model.grid_size % window or c.model.num_heads % 2):
            raise ConfigError(f"model.attention_window {window} must divide model.grid_size "
                              f"{c.model.grid_size}, and model.num_heads ({c.model.num_heads}) "
                              f"must be even (multi-axis attention splits the heads in half)")

    def init_state(self, rng) -> base.BaseState:
        return self.training.init_state(rng)

    def load(self, mesh) -> base.MaskedTokenSteps:
        """The base stage's frozen models (high-res tokenizer, text) and the low-res tokenizer."""
        return base.MaskedTokenSteps(self.training, base.load_frozen(self.config, mesh), mesh,
                                     LowResCondition.load(self.config, mesh))

    def summarize_eval(self, totals: dict) -> dict:
        return self.training.summarize_eval(totals)
