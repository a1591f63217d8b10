"""Optimisers and learning-rate schedules from an `optim` config block, all through optax."""
from __future__ import annotations

from typing import Callable

import jax
import optax

from muse_jax.errors import UserError


def learning_rate(optim, num_steps: int) -> optax.Schedule:
    """Linear warmup to `optim.lr`, then cosine decay to zero at `num_steps` (or constant)."""
    warmup = max(int(optim.warmup_steps), 0)
    if optim.schedule == "constant":
        decay = optax.constant_schedule(optim.lr)
    elif optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(optim.lr, max(num_steps - warmup, 1))
    else:
        raise UserError(f"optim.schedule must be 'cosine' or 'constant', got {optim.schedule!r}")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), decay], [warmup])


def create(optim, num_steps: int, trainable: Callable | None = None) -> optax.GradientTransformation:
    """Clipping + AdamW or Adafactor; `trainable(params) -> pytree of bool` freezes the rest.

    Frozen parameters get `optax.set_to_zero`, which keeps no optimiser state for them.
    """
    lr = learning_rate(optim, num_steps)
    if optim.name == "adamw":
        tx = optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
    elif optim.name == "adafactor":
        tx = optax.adafactor(lr, weight_decay_rate=optim.weight_decay or None)
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
