"""Optimisers and learning-rate schedules from an `optim` config block, all through optax."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from muse_jax.errors import UserError


def learning_rate(optim, num_steps: int) -> optax.Schedule:
    """Linear warmup to `optim.lr`, then cosine decay (or constant). The cosine reaches zero at
    `optim.cosine_span` x `num_steps`: 1 at the last step, above 1 later, so that the run ends
    with the learning rate still above zero."""
    warmup = max(int(optim.warmup_steps), 0)
    if optim.schedule == "constant":
        decay = optax.constant_schedule(optim.lr)
    elif optim.schedule == "cosine":
        span = round(num_steps * optim.get("cosine_span", 1.0))  # runs saved before the key
        decay = optax.cosine_decay_schedule(optim.lr, max(span - warmup, 1))
    else:
        raise UserError(f"optim.schedule must be 'cosine' or 'constant', got {optim.schedule!r}")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), decay], [warmup])


def create(optim, num_steps: int, trainable: Callable | None = None) -> optax.GradientTransformation:
    """Clipping + AdamW or Adafactor; `trainable(params) -> pytree of bool` freezes the rest.

    Both apply decoupled weight decay multiplied by the scheduled learning rate (AdamW's
    convention): with zero gradients, step t multiplies every weight by (1 - lr_t * wd).
    Frozen parameters get `optax.set_to_zero`, which keeps no optimiser state for them.
    """
    lr = learning_rate(optim, num_steps)
    if optim.name == "adamw":
        tx = optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
    elif optim.name == "adafactor":
        tx = adafactor(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay,
                       multiply_by_parameter_scale=optim.multiply_by_parameter_scale)
    else:
        raise UserError(f"optim.name must be 'adamw' or 'adafactor', got {optim.name!r}")
    if optim.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
    if trainable is not None:
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()},
                                   lambda params: jax.tree.map(
                                       lambda keep: "train" if keep else "freeze",
                                       trainable(params)))
    return tx


def adafactor(lr: optax.Schedule, b1: float, b2: float, weight_decay: float,
              multiply_by_parameter_scale: bool) -> optax.GradientTransformation:
    """Adafactor as Muse trains it (its training table: beta1 0.9, beta2 0.96, wd 0.045).

    `optax.adafactor` cannot express it: it adds the weight decay after the learning-rate
    scaling (every step shrinks every weight by `wd`, whatever the schedule says), has no
    constant second-moment decay, and its momentum averages lr-scaled updates. Chained from
    optax's pieces instead, in this order:
      factored second moments -> update clipping at RMS 1 (Adafactor's d = 1)
      -> [x parameter RMS] -> momentum b1 -> + wd * params -> x -lr_t.
    Second moments: `b2` as a cap on Adafactor's 1 - t^-0.8 schedule (Zhai et al. 2021, as
    big_vision does). From step 56 on the decay is the constant `b2`; before that the rising
    schedule stands in for Adam's bias correction, which a constant decay would need (with no
    correction the first steps' estimates are 1 - b2^t too small). Momentum is not
    bias-corrected (as in Adafactor and optax); warm-up covers its first steps.
    """
    cap = lambda step, exponent: jnp.minimum(1.0 - (step + 1.0) ** -exponent, b2)  # noqa: E731
    parts = [optax.scale_by_factored_rms(decay_rate=0.8, decay_rate_fn=cap),
             optax.clip_by_block_rms(1.0)]
    if multiply_by_parameter_scale:
        parts.append(optax.scale_by_param_block_rms())
    if b1 > 0:
        parts.append(optax.ema(b1, debias=False))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*parts)


def accumulate_gradients(loss_fn: Callable, params, batch, rng, steps: int):
    """`jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)`, in `steps` micro-batches.

    The batch's leading axis is split into `steps` equal parts, processed one after another
    by `lax.scan` so only one part's activations are alive at a time; loss, aux and
    gradients are averaged over the parts (each part's loss is its own mean, so with uneven
    masked counts the result differs slightly from one pass over the whole batch).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if steps <= 1:
        return grad_fn(params, batch, rng)
    size = jax.tree.leaves(batch)[0].shape[0]
    if size % steps:
        raise UserError(f"optim.accum_steps {steps} does not divide the batch of {size}")
    micro = jax.tree.map(lambda x: x.reshape(steps, size // steps, *x.shape[1:]), batch)

    def body(carry, xs):
        part, key = xs
        out = grad_fn(params, part, key)
        return jax.tree.map(lambda a, b: a + b / steps, carry, out), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params,
                                                        jax.tree.map(lambda x: x[0], micro), rng))
    total, _ = jax.lax.scan(body, zeros, (micro, jax.random.split(rng, steps)))
    return total
