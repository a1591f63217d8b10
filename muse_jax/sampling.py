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
`make_edit` is mask-free editing (Muse 3.3), all its rounds in one compiled call too.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from muse_jax import categorical, masking

_INF = jnp.finfo(jnp.float32).max


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    steps: int = 24  # decoding iterations (Muse: 24 base, 8 super-resolution)
    guidance: float = 4.0  # final guidance scale t (0: no guidance)
    guidance_schedule: str = "linear"  # how t rises over the steps: linear | cosine | constant
    temperature: float = 1.0  # softmax temperature of the token sampling
    top_k: int = 0  # sample from the k most likely tokens only (0: all)
    choice_temperature: float = 4.5  # Gumbel noise scale of the confidence (MaskGIT's value)
    # How that scale anneals: "maskgit" c (1 - (s+1)/T), zero at the last step; "amused"
    # AmusedScheduler's linspace(c, 0, T), c (1 - s/(T-1)), full at the first step.
    choice_schedule: str = "maskgit"
    # Rows (prompts, and their unconditional twins under guidance) each transformer pass takes
    # at a time, in one compiled loop (0: all at once). On a CPU, passes of a few rows keep the
    # activations in cache: aMUSEd-256 at batch 8 (16 rows) ran 17.4 s an image in one pass
    # against 14.2 s at batch 1 (benchmarks/amused_import.py, 2026-12-03); on accelerators
    # leave it at 0.
    rows_per_pass: int = 0

    def check(self) -> None:
        from muse_jax.errors import UserError
        if self.steps < 1:
            raise UserError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.guidance < float("inf"):  # written so that NaN fails too
            raise UserError(f"guidance must be finite and >= 0, got {self.guidance}")
        if self.rows_per_pass < 0:
            raise UserError(f"rows_per_pass must be >= 0 (0: all rows at once), got "
                            f"{self.rows_per_pass}")
        if self.guidance_schedule not in ("linear", "cosine", "constant"):
            raise UserError(f"guidance_schedule must be linear, cosine or constant, got "
                            f"{self.guidance_schedule!r}")
        if not 0 <= self.temperature < float("inf"):
            raise UserError(f"temperature must be finite and >= 0 (0: greedy), got "
                            f"{self.temperature}")
        if self.choice_schedule not in ("maskgit", "amused"):
            raise UserError(f"choice_schedule must be maskgit or amused, got {self.choice_schedule!r}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.choice_temperature < float("inf"):
            raise UserError(f"choice_temperature must be finite and >= 0, got "
                            f"{self.choice_temperature}")


def guidance_scale(options: SamplingOptions, step) -> jax.Array:
    """t at decoding step `step` (0-based): rises to `options.guidance` at the last step."""
    progress = (step + 1) / options.steps
    if options.guidance_schedule == "constant":
        return jnp.asarray(options.guidance, jnp.float32)
    if options.guidance_schedule == "cosine":
        return options.guidance * (1.0 - jnp.cos(0.5 * jnp.pi * progress))
    return options.guidance * jnp.asarray(progress, jnp.float32)


# diffusers' AmusedPipeline defaults (pipelines/deprecated/amused, AmusedScheduler): 12 steps,
# guidance_scale 10 held constant (its uncond + 10 (cond - uncond) is (1 + 9) cond - 9 uncond),
# temperature (2, 0) annealed by linspace, multinomial sampling at temperature 1, no top-k.
AMUSED = SamplingOptions(steps=12, guidance=9.0, guidance_schedule="constant", temperature=1.0,
                         top_k=0, choice_temperature=2.0, choice_schedule="amused")


def choice_scale(options: SamplingOptions, step) -> jax.Array:
    """The Gumbel-noise scale of the confidence at decoding step `step` (0-based)."""
    if options.choice_schedule == "amused":
        return options.choice_temperature * (1.0 - step / max(options.steps - 1, 1))
    return options.choice_temperature * (1.0 - (step + 1) / options.steps)


def kth_largest(x, k: int):
    """The k-th largest value along the last axis, ties counted: `jax.lax.top_k(x, k)[0][..., -1]`.

    On a CPU by k - 1 passes that each drop one maximum: XLA:CPU's TopK sorts every row, a
    comparator call per comparison, and took 7.7 ms for k = 3 over [1, 256, 256] logits (one
    edit step of the demo's model) against 0.15 ms this way, 7.2 against 1.5 ms for k = 24
    (jitted, in a loop of 100, 2026-12-07, 2-core AMD EPYC). Other backends keep TopK.
    """
    if jax.default_backend() != "cpu":
        return jax.lax.top_k(x, k)[0][..., -1]
    columns = jnp.arange(x.shape[-1])

    def drop_max(_, y):
        return jnp.where(columns == jnp.argmax(y, axis=-1)[..., None], -jnp.inf, y)

    return jnp.max(jax.lax.fori_loop(0, k - 1, drop_max, x), axis=-1)


def _top_k(logits, k: int):
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = kth_largest(logits, k)[..., None]
    return jnp.where(logits < kth, -_INF, logits)


def _keep_likely(logits, sampled, previous, k: int):
    """`previous` where its logit is among the k largest (k >= the codebook: always), else
    `sampled`."""
    kth = kth_largest(logits, min(k, logits.shape[-1]))
    mine = jnp.take_along_axis(logits, previous[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.where(mine >= kth, previous.astype(jnp.int32), sampled)


def decode(logits_fn: Callable, canvas, mask_id: int, rng, options: SamplingOptions,
           previous=None, keep: int = 0):
    """Fills the [MASK] positions of `canvas` [B, N] int32; returns the finished tokens [B, N].

    `logits_fn(tokens [R, N]) -> [R, N, K]`, pure, so the loop compiles as a whole. With
    guidance it gets 2B rows, the conditional pass (first B) and the unconditional one (last
    B) in one call; with `options.guidance == 0` only the B conditional rows (half the work).
    With `keep` k > 0, a masked position whose token in `previous` [B, N] (mask editing's
    tokens before the round) is among the k most likely under the guided logits takes that
    token instead of a sampled one.
    """
    batch, num_tokens = canvas.shape
    unknown0 = jnp.sum(canvas == mask_id, axis=-1)  # [B] masked at the start
    guided_pass = options.guidance > 0

    def body(step, carry):
        tokens, rng = carry
        rng, rng_sample, rng_gumbel = jax.random.split(rng, 3)
        masked = tokens == mask_id
        if guided_pass:
            logits = logits_fn(jnp.concatenate([tokens, tokens], axis=0)).astype(jnp.float32)
            cond, uncond = logits[:batch], logits[batch:]
            t = guidance_scale(options, step)
            guided = (1.0 + t) * cond - t * uncond
        else:
            guided = logits_fn(tokens).astype(jnp.float32)
        ranked = guided
        # Confidence: the chosen token's log-probability (the draw gives it for the drawn one).
        if options.temperature == 0:  # greedy: the most likely token
            sampled = jnp.argmax(guided, axis=-1).astype(jnp.int32)
        else:
            guided = _top_k(guided / options.temperature, options.top_k)
            sampled, confidence = categorical.sample(rng_sample, guided)
        if keep:
            sampled = _keep_likely(ranked, sampled, previous, keep)
        if keep or options.temperature == 0:
            log_probs = jax.nn.log_softmax(guided, axis=-1)
            confidence = jnp.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0]
        anneal = choice_scale(options, step)
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


def _logits_fn(model, options: SamplingOptions, params, emb, mask, uncond_emb, uncond_mask,
               low_res=None) -> Callable:
    """`decode`'s logits function for `model` and these prompts. The text (and low-res) side of
    every cross-attention is encoded here, once per prompt, outside the decoding loop; each
    step then runs the token pass alone. Without guidance only the prompts are encoded."""
    if options.guidance > 0:
        uncond_emb = jnp.broadcast_to(uncond_emb, emb.shape).astype(emb.dtype)
        uncond_mask = jnp.broadcast_to(uncond_mask, mask.shape)
        emb = jnp.concatenate([emb, uncond_emb], axis=0)
        mask = jnp.concatenate([mask, uncond_mask], axis=0)
        # The SR model's unconditional branch keeps the low-res tokens and drops only the
        # caption, as its training's caption dropout does.
        if low_res is not None:
            low_res = jnp.concatenate([low_res, low_res], axis=0)
    extra = () if low_res is None else (low_res,)
    context_kv = model.apply({"params": params}, emb, mask, *extra, method="encode_context")

    def logits(tokens, kv):
        return model.apply({"params": params}, tokens, kv, method="logits")

    rows = options.rows_per_pass
    if not rows or rows >= emb.shape[0]:
        return lambda tokens: logits(tokens, context_kv)
    def one_row(row):  # lax.map vmaps it over `rows` rows at a time
        tokens, kv = jax.tree.map(lambda x: x[None], row)
        return logits(tokens, kv)[0]

    return lambda tokens: jax.lax.map(one_row, (tokens, context_kv), batch_size=rows)


def _generate(model, options: SamplingOptions, params, emb, mask, uncond_emb, uncond_mask, rng,
              canvas, low_res=None):
    """`decode` with `model`'s logits under guidance; the conditioning encoded once, first."""
    logits_fn = _logits_fn(model, options, params, emb, mask, uncond_emb, uncond_mask, low_res)
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
    `cascade(params, emb, mask, uncond_emb, uncond_mask, rng, canvas, sr_canvas)`.

    params: {"base": ..., "sr": ...} and, with a `decoder` (the high-res VQGAN), "decoder";
    canvas: the base model's [B, n], sr_canvas: the SR model's [B, N], each with [MASK] where
    tokens are to be generated (all [MASK] to generate an image). The base model fills the
    canvas, the SR model fills its canvas conditioned on those tokens and the same prompts, with
    guidance in both, and the decoder (if any) turns them into pixels. Inpainting as Muse does
    it (its text-guided inpainting): both canvases hold the input's tokens, at the two
    resolutions, with the region masked in both, so everything outside it is kept at both.
    Both models must read the same text embeddings.
    Returns {"low_res": [B, n], "tokens": [B, N], "images": [B,H,W,3]}.
    """
    base_options.check()
    sr_options.check()

    @jax.jit
    def cascade(params, emb, mask, uncond_emb, uncond_mask, rng, canvas, sr_canvas):
        rng_base, rng_sr = jax.random.split(rng)
        low_res = _generate(base, base_options, params["base"], emb, mask, uncond_emb,
                            uncond_mask, rng_base, canvas)
        tokens = _generate(sr, sr_options, params["sr"], emb, mask, uncond_emb, uncond_mask,
                           rng_sr, sr_canvas, low_res)
        out = {"low_res": low_res, "tokens": tokens}
        if decoder is not None:
            ids = tokens.reshape(tokens.shape[0], *sr.grid)
            out["images"] = decoder.apply({"params": params["decoder"]}, ids, method=decoder.decode)
        return out

    return cascade


@dataclasses.dataclass(frozen=True)
class EditOptions:
    """Mask-free editing (Muse 3.3): the paper resamples 8% of the tokens per iteration for 100
    iterations with guidance 4 and top-k 3; guidance comes from the `SamplingOptions`."""
    iterations: int = 100  # re-mask-and-fill rounds
    mask_rate: float = 0.08  # share of the tokens re-masked (at random) each round
    # Decoding steps that fill one round's re-masked tokens. Not in the paper, which does not
    # say; 8% of the tokens need far fewer than a full decode's 24 (see `sample --edit_steps`).
    steps: int = 4
    top_k: int = 3  # sample each re-masked token among its k most likely
    # Not in the paper, which resamples every re-masked token (keep 0, the default): a re-masked
    # token keeps its value when the guided model ranks it among its `keep` most likely, so the
    # rounds change what the new prompt makes unlikely and leave the rest as it was. 100 rounds
    # of 8% redraw every token ~8 times, and a model unsure of the tokens it is not asked to
    # change blurs them: on the demo's model (256 codes, 32 shapes_edit scenes, 2026-12-04) keep
    # 0 / 3 / 24 / 64 kept every other object in 69 / 75 / 91 / 84% of the edits, at 21.2 / 22.6
    # / 25.8 / 27.0 dB outside the edited cell, and made exactly the new scene in 38 / 53 / 62 /
    # 56% (the demo uses 24).
    keep: int = 0

    def check(self) -> None:
        from muse_jax.errors import UserError
        if self.iterations < 1:
            raise UserError(f"edit iterations must be >= 1, got {self.iterations}")
        if not 0.0 < self.mask_rate <= 1.0:
            raise UserError(f"edit mask rate must be in (0, 1], got {self.mask_rate}")
        if self.steps < 1:
            raise UserError(f"edit steps must be >= 1, got {self.steps}")
        if self.top_k < 0:
            raise UserError(f"edit top_k must be >= 0, got {self.top_k}")
        if self.keep < 0:
            raise UserError(f"edit keep must be >= 0 (0: resample every re-masked token), got "
                            f"{self.keep}")


def make_edit(model, options: SamplingOptions, edit: EditOptions) -> Callable:
    """Mask-free editing as one compiled call:
    `edit(params, emb, mask, uncond_emb, uncond_mask, rng, tokens) -> tokens [B, N]`.

    `edit.iterations` times, a random `edit.mask_rate` share of the tokens is re-masked and
    filled in `edit.steps` decoding steps under the new prompt (guidance and temperature from
    `options`, top-k from `edit`), so the image drifts towards the prompt while each round keeps
    most of its structure; a re-masked token the model still ranks among its `edit.keep` most
    likely keeps its value. The prompts are encoded once, for all rounds.
    """
    edit.check()
    step_options = dataclasses.replace(options, steps=edit.steps, top_k=edit.top_k)
    step_options.check()

    @jax.jit
    def run(params, emb, mask, uncond_emb, uncond_mask, rng, tokens):
        logits_fn = _logits_fn(model, step_options, params, emb, mask, uncond_emb, uncond_mask)

        def body(i, tokens):
            rng_mask, rng_decode = jax.random.split(jax.random.fold_in(rng, i))
            remask = jax.random.uniform(rng_mask, tokens.shape) < edit.mask_rate
            canvas = jnp.where(remask, model.mask_id, tokens)
            return decode(logits_fn, canvas, model.mask_id, rng_decode, step_options,
                          previous=tokens, keep=edit.keep)

        return jax.lax.fori_loop(0, edit.iterations, body, tokens.astype(jnp.int32))

    return run
