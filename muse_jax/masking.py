"""Which tokens the transformer must predict: mask rates, masks, the loss, caption dropout
and caption-token dropout.

Training (Muse 2.6): a mask rate r per example from the truncated arccos distribution
p(r) = 2/pi (1 - r^2)^(-1/2) on [0, 1), whose mean 2/pi ~ 0.64 favours high rates; round(r N)
random tokens (at least one) become [MASK]; the loss is the cross-entropy on those only.
Sampling (MaskGIT): after a fraction t of the steps, cos(pi/2 t) of the tokens stay masked.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def sample_mask_rate(rng, shape) -> jax.Array:
    """r with density 2/pi (1 - r^2)^(-1/2): the CDF is 2/pi arcsin(r), so r = sin(pi/2 u).

    MaskGIT writes cos(pi/2 u); with u uniform, 1 - u is too, so it is the same law. In
    float32, u close to 1 rounds r up to exactly 1: every token masked, a valid case.
    """
    return jnp.sin(0.5 * jnp.pi * jax.random.uniform(rng, shape))


def random_mask(rng, batch: int, num_tokens: int, rate) -> jax.Array:
    """Bool [batch, num_tokens], exactly clip(round(rate_b N), 1, N) True in row b."""
    count = jnp.clip(jnp.round(jnp.asarray(rate) * num_tokens), 1, num_tokens).astype(jnp.int32)
    scores = jax.random.uniform(rng, (batch, num_tokens))
    ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    return ranks < jnp.broadcast_to(count, (batch,))[:, None]


def cosine_schedule(t) -> jax.Array:
    """Fraction of tokens still masked after a fraction t in [0, 1] of the decoding steps."""
    return jnp.cos(0.5 * jnp.pi * jnp.asarray(t, jnp.float32))


def num_masked(step, total_steps: int, num_tokens: int) -> jax.Array:
    """Tokens left masked after `step` of `total_steps` decoding steps (0 after the last)."""
    left = jnp.floor(cosine_schedule((step + 1) / total_steps) * num_tokens)
    return jnp.maximum(left, 0).astype(jnp.int32)  # cos(pi/2) is -4e-8 in float32


def masked_cross_entropy(logits, targets, mask, label_smoothing: float = 0.0):
    """Mean cross-entropy over the masked positions of the whole batch, and their accuracy.

    Unmasked positions contribute nothing, not even to the denominator: their ids are in
    the input, so predicting them is trivial and would make the loss look lower than it is.
    """
    num_classes = logits.shape[-1]
    labels = optax.smooth_labels(jax.nn.one_hot(targets, num_classes), label_smoothing) \
        if label_smoothing else jax.nn.one_hot(targets, num_classes)
    per_token = optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)
    weights = mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weights), 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(per_token * weights) / count, {"accuracy": jnp.sum(correct * weights) / count}


def drop_captions(rng, emb, mask, empty_emb, empty_mask, rate: float):
    """Replaces each example's text by the empty caption's with probability `rate` (Muse 2.7).

    The unconditional branch of classifier-free guidance then sees exactly what sampling
    feeds it: the encoder's embedding of "", not zeros.
    """
    drop = jax.random.bernoulli(rng, rate, (emb.shape[0],))
    emb = jnp.where(drop[:, None, None], empty_emb[None].astype(emb.dtype), emb)
    mask = jnp.where(drop[:, None], empty_mask[None], mask)
    return emb, mask


def drop_text_tokens(rng, mask, rate: float):
    """Hides each caption token but the first from cross-attention with probability `rate`.

    Not in Muse. A CPU-sized model trained for minutes keys on exact words ("top"), and a
    phrasing it never saw ("upper") then goes unread. Hiding words at random makes it read
    each object's place and look from every token that carries them: a frozen encoder's
    states mix in their neighbours ("left" in "the top left corner"), and those survive a
    paraphrase. The first token (BERT's [CLS], T5's first word) stays, so no caption is
    emptied; padding stays hidden.
    """
    if not rate:
        return mask
    keep = jax.random.bernoulli(rng, 1.0 - rate, mask.shape).at[:, 0].set(True)
    return mask & keep
