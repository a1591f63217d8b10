"""The activations that imported checkpoints name, by their Hugging Face / diffusers names.

BERT's `hidden_act`, T5's `dense_act_fn`, CLIP's `hidden_act` and diffusers' `act_fn` all
pick from one table, so an exact-erf "gelu" is written once for every family.
"""
from __future__ import annotations

import jax


def quick_gelu(x):
    """OpenAI CLIP's x * sigmoid(1.702 x) (transformers' "quick_gelu")."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # what HF's "gated-gelu" means
    "silu": jax.nn.silu,
    "quick_gelu": quick_gelu,
}
