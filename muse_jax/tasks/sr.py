"""Super-resolution stage (Muse 2.4): predict masked high-res tokens from the rest, the low-res
tokens of the same image, and the text.

Training is the base stage's (tasks/base.py: arccos mask rates, caption dropout, loss on the
masked positions, EMA), which this task inherits; what differs is the model and one more input.
Each image is tokenised twice by frozen VQGANs: at `data.image_size` by `tokenizer.workdir` (the
targets), and box-downsampled to `low_res.image_size` by the base stage's tokenizer (the
condition), so the condition is what the base model produces at sampling time. Caption dropout
replaces the text only; the low-res tokens stay, so guidance's unconditional branch at sampling
time is "this low-res image, no caption".
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from muse_jax.config import ConfigError
from muse_jax.models.transformer import SuperResTransformer
from muse_jax.tasks import vqgan as vqgan_task
from muse_jax.tasks.base import BaseState, BaseTask, render_tokens


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


class SRTask(BaseTask):
    """The base task with the SR model and the low-res tokens as `_extra_inputs`."""

    def __init__(self, config):
        super().__init__(config)
        self.model = build_model(config)
        self.low_res_tokenizer = None  # loaded by load_frozen

    def check_config(self) -> None:
        super().check_config()
        c = self.config
        if c.data.train_tokens or c.data.eval_tokens:
            raise ConfigError("the sr stage tokenises images itself (it needs their low-res tokens "
                              "too): data.train_tokens and data.eval_tokens must be empty")
        if c.low_res.image_size <= 0 or c.data.image_size % c.low_res.image_size:
            raise ConfigError(f"low_res.image_size {c.low_res.image_size} must divide "
                              f"data.image_size {c.data.image_size}")
        window = c.model.attention_window
        if window and (c.model.grid_size % window or c.model.num_heads % 2):
            raise ConfigError(f"model.attention_window {window} must divide model.grid_size "
                              f"{c.model.grid_size}, and model.num_heads ({c.model.num_heads}) "
                              f"must be even (multi-axis attention splits the heads in half)")

    def init_state(self, rng) -> BaseState:
        m = self.config.model
        tokens = jnp.zeros((1, self.num_tokens), jnp.int32)
        low_res = jnp.zeros((1, m.low_res_grid_size ** 2), jnp.int32)
        text = jnp.zeros((1, self.config.text.max_length, m.text_dim), jnp.float32)
        params = self.model.init(rng, tokens, text, jnp.ones(text.shape[:2], bool),
                                 low_res)["params"]
        return BaseState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=self.tx.init(params), ema_params=params)

    def load_frozen(self, mesh) -> dict:
        """The base stage's frozen parts (high-res tokenizer, text) plus the low-res tokenizer."""
        frozen = super().load_frozen(mesh)
        c = self.config
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
        self.low_res_tokenizer = model
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        return {**frozen, "low_res_tokenizer": jax.device_put(params, replicated)}

    def _extra_inputs(self, batch, frozen) -> dict:
        low = downsample(batch["image"], self.config.low_res.image_size)
        ids = self.low_res_tokenizer.apply({"params": frozen["low_res_tokenizer"]}, low,
                                           method=self.low_res_tokenizer.encode)
        return {"low_res": jax.lax.stop_gradient(ids.reshape(ids.shape[0], -1))}

    def _logits(self, params, part: dict, **kwargs):
        return self.model.apply({"params": params}, part["inputs"], part["emb"], part["text_mask"],
                                part["low_res"], **kwargs)

    def _condition_images(self, extra: dict, frozen) -> list:
        """The low-res input, decoded by the low-res tokenizer and upsampled to the high-res size."""
        low = render_tokens(self.low_res_tokenizer, frozen["low_res_tokenizer"], extra["low_res"],
                            self.config.model.low_res_grid_size)
        size = self.config.data.image_size
        return [jax.image.resize(low, (low.shape[0], size, size, low.shape[-1]), "nearest")]
