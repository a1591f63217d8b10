"""The metric networks, loaded from local files (or randomly initialised, to test the path).

Each returns a `ShardedApply` (sharded.py) of images in [-1, 1], NHWC, float32:
  inception  -> pool3 features [B, 2048] for FID
  lpips      -> LPIPS-VGG distances [B] between two image batches
Random weights make the numbers meaningless; they exist so the evaluation commands can be run
end to end on a machine that holds no pretrained files (tests, a first try on a new VM).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from muse_jax.config import ConfigError
from muse_jax.models import inception as inception_model
from muse_jax.models import perceptual
from muse_jax.quality.sharded import ShardedApply

_INCEPTION = inception_model.FIDInceptionV3()


def _features(params, images):
    return _INCEPTION.apply({"params": params}, images)


def inception_from_file(path: str, mesh=None) -> ShardedApply:
    try:
        params = inception_model.load_params(path)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    return ShardedApply(_features, params, mesh)


def inception_random(seed: int, mesh=None) -> ShardedApply:
    import flax.linen as nn
    params = nn.unbox(_INCEPTION.init(jax.random.key(seed), jnp.zeros((1, 75, 75, 3)))["params"])
    return ShardedApply(_features, params, mesh)


def lpips_from_file(path: str, mesh=None) -> ShardedApply:
    try:
        weights = perceptual.load_weights(path)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    return ShardedApply(perceptual.lpips, weights, mesh)
