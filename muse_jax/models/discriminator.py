"""PatchGAN discriminator (Isola et al., arXiv 1611.07004) with hinge and LeCam losses.

GroupNorm instead of BatchNorm: it keeps the discriminator a pure function of its params
(no batch statistics in the train state) and behaves the same under any batch sharding.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from muse_jax.models.vqgan import conv, group_norm


class PatchDiscriminator(nn.Module):
    """Logits [B, h, w, 1], one per overlapping patch (70x70 receptive field at 3 layers)."""
    channels: int = 64
    num_layers: int = 3
    norm_groups: int = 32

    @nn.compact
    def __call__(self, x):
        x = nn.leaky_relu(conv(self.channels, kernel=4, strides=2)(x), 0.2)
        for i in range(1, self.num_layers + 1):
            features = self.channels * min(2 ** i, 8)
            stride = 2 if i < self.num_layers else 1
            x = conv(features, kernel=4, strides=stride)(x)
            x = nn.leaky_relu(group_norm(min(self.norm_groups, features))(x), 0.2)
        return conv(1, kernel=4)(x)


def hinge_d_loss(logits_real, logits_fake):
    return jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake))


def hinge_g_loss(logits_fake):
    return -jnp.mean(logits_fake)


def lecam_loss(logits_real, logits_fake, ema_real, ema_fake):
    """LeCam regulariser (Tseng et al., arXiv 2104.03310, eq. 3) against EMAs of the logits."""
    return (jnp.mean(jnp.square(jax.nn.relu(logits_real - ema_fake)))
            + jnp.mean(jnp.square(jax.nn.relu(ema_real - logits_fake))))
