"""LoRA (Hu et al., arXiv 2106.09685): low-rank adapters on the projections of any model.

An adapter is a pair (A [*in, r], B [r, *out]) beside a kernel W [*in, *out]; the adapted
model runs with W + (alpha / r) * A B, B zero at the start, so step 0 is the pretrained model
exactly. Adapters are a parameter transformation, not a module: they are selected by the
path of each kernel in the params tree, so the same code adapts the base and SR transformers
here and any other linen model (the aMUSEd U-ViT has only its own table, `UVIT_TARGETS`)
without touching the model's code. The params tree of the adapters mirrors the model's,
with `{"lora_a", "lora_b"}` in place of each adapted kernel:

    adapters = init(rng, params, targets, rank)          # only these are trained
    weights = apply(params, adapters, scale(alpha, rank))  # what model.apply runs with
    merged = apply(params, adapters, s)                  # the same, saved: a standalone model

Departure from PEFT's LoRA: its dropout drops the adapter's *input* per example; applying
the adapter as a weight delta has no per-example input, so `lora.dropout` drops whole rank
components of the delta instead (one draw per step, rescaled by 1 / (1 - p)), a
regulariser of the same kind that keeps the transformation model-agnostic.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

RANK_AXIS = "lora_rank"  # logical axis of the rank dimension (parallel.LOGICAL_AXIS_RULES)


def _targets(attention: str, mlp_in: str, mlp_out: str) -> dict[str, tuple[str, int]]:
    """Target name -> (regex on the kernel's "/"-joined params path, number of leading input
    axes of that kernel), for a model whose attention modules match `attention` and whose MLP
    kernels are `mlp_in` / `mlp_out`: q, k, v are [embed, heads, kv], out [heads, kv, embed],
    the MLP [in, out]."""
    table = {name: (rf"(^|/){attention}/{name}/kernel$", 2 if name == "out" else 1)
             for name in ("query", "key", "value", "out")}
    table.update(mlp_in=(rf"(^|/){mlp_in}/kernel$", 1), mlp_out=(rf"(^|/){mlp_out}/kernel$", 1))
    return table


# The base and SR transformers of models/transformer.py.
TRANSFORMER_TARGETS: Mapping[str, tuple[str, int]] = _targets(
    "(self|cross)_attention", "mlp_in", "mlp_out")
# aMUSEd's U-ViT (models/uvit.py), by the same names so one `finetune.lora.targets` default
# fits both: `attn1`/`attn2` of the transformer layers (self- and cross-attention) and of the
# down/up blocks' attention pairs (both cross-attention); the MLP is the layers' GEGLU
# feed-forward. diffusers' names: to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2.
UVIT_TARGETS: Mapping[str, tuple[str, int]] = _targets("attn[12]", "ff_in", "ff_out")
# `model.kind` -> its targets: the table a fine-tune of that model adapts by (tasks/finetune.py).
MODEL_TARGETS: Mapping[str, Mapping[str, tuple[str, int]]] = {
    "muse": TRANSFORMER_TARGETS, "uvit": UVIT_TARGETS}


def scale(alpha: float, rank: int) -> float:
    """The multiplier of A B (LoRA's alpha / r), so that changing the rank keeps the lr."""
    return alpha / rank


def select(params, targets: Mapping[str, tuple[str, int]], names) -> dict[tuple, int]:
    """{path of each kernel to adapt: its number of input axes} for the target `names`."""
    unknown = sorted(set(names) - set(targets))
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; known: {sorted(targets)}")
    patterns = [(re.compile(targets[n][0]), targets[n][1]) for n in names]
    chosen = {}
    for path in flax.traverse_util.flatten_dict(_unbox(params)):
        for pattern, in_axes in patterns:
            if pattern.search("/".join(path)):
                chosen[path] = in_axes
    return chosen


def init(rng, params, targets: Mapping[str, tuple[str, int]], names, rank: int) -> dict:
    """Adapters for the kernels of `params` that `names` select: A uniform in
    +-1/sqrt(fan_in) (PEFT's kaiming-uniform with a = sqrt(5)), B zero.

    Boxed kernels (nn.Partitioned, as `model.init` returns them) give their adapters the
    same logical axes, the rank axis being `RANK_AXIS`, so one rules table shards both.
    """
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    chosen = select(params, targets, names)
    if not chosen:
        raise ValueError(f"no kernel of the model matches the LoRA targets {list(names)}")
    out = {}
    for i, (path, in_axes) in enumerate(sorted(chosen.items())):
        kernel = flat[path]
        names_ = getattr(kernel, "names", None)
        shape = nn.unbox(kernel).shape
        fan_in = math.prod(shape[:in_axes])
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(jax.random.fold_in(rng, i), (*shape[:in_axes], rank),
                               jnp.float32, -bound, bound)
        b = jnp.zeros((rank, *shape[in_axes:]), jnp.float32)
        if names_ is not None:  # the kernel's box type (logical names, usually) for both
            a = kernel.replace(value=a, names=(*names_[:in_axes], RANK_AXIS))
            b = kernel.replace(value=b, names=(RANK_AXIS, *names_[in_axes:]))
        out[path[:-1] + ("lora_a",)] = a
        out[path[:-1] + ("lora_b",)] = b
    return flax.traverse_util.unflatten_dict(out)


def delta(a, b, rank_mask=None):
    """A B [*in, *out] (with `rank_mask` [r], A's rank components weighted first)."""
    if rank_mask is not None:
        a = a * rank_mask.astype(a.dtype)
    return jnp.tensordot(a, b, axes=1)


def apply(params, adapters, multiplier: float, dropout: float = 0.0, rng=None):
    """`params` with every adapted kernel W replaced by W + multiplier * A B (same dtype).

    With `dropout` > 0 (training only; `rng` needed) each adapter's rank components are
    dropped with that probability and the rest rescaled (see the module docstring).
    Traceable; the result is what `model.apply` takes.
    """
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    flat_adapters = flax.traverse_util.flatten_dict(flax.core.unfreeze(adapters))
    for i, path in enumerate(sorted(p for p in flat_adapters if p[-1] == "lora_a")):
        kernel_path = path[:-1] + ("kernel",)
        if kernel_path not in flat:
            raise ValueError(f"adapter {'/'.join(path[:-1])} has no kernel in the model")
        a, b = flat_adapters[path], flat_adapters[path[:-1] + ("lora_b",)]
        mask = None
        if dropout > 0.0:
            keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1.0 - dropout, (a.shape[-1],))
            mask = keep / (1.0 - dropout)
        kernel = flat[kernel_path]
        flat[kernel_path] = (kernel + multiplier * delta(a, b, mask)).astype(kernel.dtype)
    return flax.traverse_util.unflatten_dict(flat)


def _unbox(tree):
    return nn.unbox(flax.core.unfreeze(tree))
