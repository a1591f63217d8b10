"""Iterative parallel decoding (MaskGIT, arXiv 2202.04200; Muse 2.7 and 3.3), one compiled loop.

Start from a canvas of known tokens and [MASK]s (all [MASK] for generation). Each of the
`steps` iterations predicts every masked token, samples one per position, and keeps the most
confident ones; after step s (of T), cos(pi/2 (s+1)/T) of the initially masked tokens are
masked again, so the last step fills in the rest. Confidence is the sampled token's
log-probability plus Gumbel noise scaled by `choice_temperature * (1 - (s+1)/T)`, annealed to
zero; known tokens have infinite confidence, so a token once fixed is never re-masked, and
tokens given in the canvas (inpainting, outpainting) never change at all.

Classifier-free guidance (Muse 2.7): logits = (1 + t) l_cond - t l_uncond with the scale t
rising from 0 to `guidance` over the steps; the unconditional pass sees the empty caption's
embedding, or a negative prompt's. Both passes run as one batch.

`make_cascade` chains the base model, the super-resolution model (Muse 2.4, conditioned on the
base model's tokens) and the high-res VQGAN decoder in one compiled call, guided in both stages.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from muse_jax import masking

_INF = jnp.finfo(jnp.float32).max


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    steps: int = 24  # decoding iterations (Muse: 24 base, 8 super-resolution)
    guidance: float = 4.0  # final guidance scale t (0: no guidance)
    guidance_schedule: str = "linear"  # how t rises over the steps: linear | cosine | constant
    temperature: float = 1.0  # softmax temperature of the token sampling
    top_k: int = 0  # sample from the k most likely tokens only (0: all)
    choice_temperature: float = 4.5  # Gumbel noise scale of the confidence (MaskGIT's value)

    def check(self) -> None:
        from muse_jax.errors import UserError
        if self.steps < 1:
            raise UserError(f"steps must be >= 1, got {self.steps}")
        if self.guidance < 0:
            raise UserError(f"guidance must be >= 0, got {self.guidance}")
        if self.guidance_schedule not in ("linear", "cosine", "constant"):
            raise UserError(f"guidance_schedule must be linear, cosine or constant, got "
                            f"{self.guidance_schedule!r}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0, got {self.top_k}")


def guidance_scale(options: SamplingOptions, step) -> jax.Array:
    """t at decoding step `step` (0-based): rises to `options.guidance` at the last step."""
    progress = (step + 1) / options.steps
    if options.guidance_schedule == "constant":
        return jnp.asarray(options.guidance, jnp.float32)
    if options.guidance_schedule == "cosine":
        return options.guidance * (1.0 - jnp.cos(0.5 * jnp.pi * progress))
    return options.guidance * jnp.asarray(progress, jnp.float32)


def _top_k(logits, k: int):
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -_INF, logits)


def decode(logits_fn: Callable, canvas, mask_id: int, rng, options: SamplingOptions):
    """Fills the [MASK] positions of `canvas` [B, N] int32; returns the finished tokens [B, N].

    `logits_fn(tokens [2B, N]) -> [2B, N, K]` runs the conditional (first B rows) and the
    unconditional (last B rows) pass in one call; pure, so the loop compiles as a whole.
    """
    batch, num_tokens = canvas.shape
    unknown0 = jnp.sum(canvas == mask_id, axis=-1)  # [B] masked at the start

    def body(step, carry):
        tokens, rng = carry
        rng, rng_sample, rng_gumbel = jax.random.split(rng, 3)
        masked = tokens == mask_id
        both = jnp.concatenate([tokens, tokens], axis=0)
        logits = logits_fn(both).astype(jnp.float32)
        cond, uncond = logits[:batch], logits[batch:]
        t = guidance_scale(options, step)
        guided = (1.0 + t) * cond - t * uncond
        guided = _top_k(guided / options.temperature, options.top_k)
        sampled = jax.random.categorical(rng_sample, guided, axis=-1).astype(jnp.int32)
        log_probs = jax.nn.log_softmax(guided, axis=-1)
        confidence = jnp.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0]
        anneal = options.choice_temperature * (1.0 - (step + 1) / options.steps)
        confidence = confidence + anneal * jax.random.gumbel(rng_gumbel, confidence.shape)
        sampled = jnp.where(masked, sampled, tokens)
        confidence = jnp.where(masked, confidence, _INF)

        # How many stay masked: the cosine schedule of the initially masked count, at least one
        # fewer than are masked now (progress every step) and at least one until the last step.
        remaining = jnp.sum(masked, axis=-1)
        target = jnp.floor(masking.cosine_schedule((step + 1) / options.steps) * unknown0)
        target = jnp.clip(target.astype(jnp.int32), 1, jnp.maximum(remaining - 1, 1))
        target = jnp.where((step == options.steps - 1) | (remaining == 0), 0, target)
        ranks = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)
        remask = ranks < target[:, None]
        return jnp.where(remask, mask_id, sampled), rng

    tokens, _ = jax.lax.fori_loop(0, options.steps, body, (canvas, rng))
    return tokens


def _generate(model, options: SamplingOptions, params, emb, mask, uncond_emb, uncond_mask, rng,
              canvas, low_res=None):
    """`decode` with `model`'s logits under guidance; the conditioning encoded once, first."""
    uncond_emb = jnp.broadcast_to(uncond_emb, emb.shape).astype(emb.dtype)
    uncond_mask = jnp.broadcast_to(uncond_mask, mask.shape)
    text = jnp.concatenate([emb, uncond_emb], axis=0)
    text_mask = jnp.concatenate([mask, uncond_mask], axis=0)
    # The SR model's unconditional branch keeps the low-res tokens and drops only the caption,
    # as its training's caption dropout does.
    extra = () if low_res is None else (jnp.concatenate([low_res, low_res], axis=0),)
    # The text (and low-res) side of every cross-attention, once per prompt, outside the loop:
    # each step then runs the token pass alone.
    context_kv = model.apply({"params": params}, text, text_mask, *extra, method="encode_context")

    def logits_fn(tokens):
        return model.apply({"params": params}, tokens, context_kv, method="logits")

    return decode(logits_fn, canvas, model.mask_id, rng, options)


def make_generate(model, options: SamplingOptions) -> Callable:
    """A jit-compiled `generate(params, emb, mask, uncond_emb, uncond_mask, rng, canvas[, low_res])`.

    emb/mask: the prompts' text embeddings [B,L,D] and masks [B,L]; uncond_*: the empty
    caption's (or negative prompts'), broadcastable to the same shapes; canvas: [B, N] ids with
    `model.mask_id` where tokens are to be generated; low_res: [B, n] low-res tokens, for a
    `SuperResTransformer` only. Returns tokens [B, N]. The cross-attention keys and values
    (`model.encode_context`) are computed once, before the loop.
    """
    options.check()
    return jax.jit(functools.partial(_generate, model, options))


def make_cascade(base, sr, base_options: SamplingOptions, sr_options: SamplingOptions,
                 decoder=None) -> Callable:
    """Muse's two stages as one compiled call (Muse 2.4; 24 base + 8 SR steps in the paper):
    `cascade(params, emb, mask, uncond_emb, uncond_mask, rng, canvas)`.

    params: {"base": ..., "sr": ...} and, with a `decoder` (the high-res VQGAN), "decoder";
    canvas: the base model's [B, n] (all [MASK] to generate). The base model fills the canvas,
    the SR model generates high-res tokens conditioned on them and the same prompts, with
    guidance in both, and the decoder (if any) turns them into pixels. Both models must read
    the same text embeddings. Returns {"low_res": [B, n], "tokens": [B, N], "images": [B,H,W,3]}.
    """
    base_options.check()
    sr_options.check()

    @jax.jit
    def cascade(params, emb, mask, uncond_emb, uncond_mask, rng, canvas):
        rng_base, rng_sr = jax.random.split(rng)
        low_res = _generate(base, base_options, params["base"], emb, mask, uncond_emb,
                            uncond_mask, rng_base, canvas)
        blank = jnp.full((canvas.shape[0], sr.grid[0] * sr.grid[1]), sr.mask_id, jnp.int32)
        tokens = _generate(sr, sr_options, params["sr"], emb, mask, uncond_emb, uncond_mask,
                           rng_sr, blank, low_res)
        out = {"low_res": low_res, "tokens": tokens}
        if decoder is not None:
            ids = tokens.reshape(tokens.shape[0], *sr.grid)
            out["images"] = decoder.apply({"params": params["decoder"]}, ids, method=decoder.decode)
        return out

    return cascade


def edit_tokens(resample: Callable, tokens, iterations: int, mask_rate: float, mask_id: int,
                seed: int):
    """Mask-free editing (Muse 3.3): `iterations` times, re-mask a random `mask_rate` share of
    the tokens and let `resample(canvas, seed)` fill them in under the new prompt, so the image
    drifts towards the prompt while keeping most of its structure at each iteration."""
    import numpy as np

    from muse_jax.errors import UserError
    if iterations < 1 or not 0.0 < mask_rate <= 1.0:
        raise UserError(f"editing needs iterations >= 1 and 0 < mask rate <= 1, got "
                        f"{iterations} and {mask_rate}")
    rng = np.random.default_rng(seed)
    tokens = np.asarray(tokens)
    for i in range(iterations):
        canvas = np.where(rng.random(tokens.shape) < mask_rate, mask_id, tokens).astype(np.int32)
        tokens = np.asarray(resample(canvas, seed + i + 1))
    return tokens
