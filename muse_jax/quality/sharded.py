"""A frozen network's batched forward pass, sharded over every device, results on the host.

Metric networks (Inception, CLIP, LPIPS) are frozen and small next to the models they score:
their weights are replicated, each batch is split over the data axes of a mesh of all
devices, and the outputs come back to the host as numpy for float64 accumulation there.
A batch that does not divide by the device count is padded with copies of its last row and
the padding dropped from the outputs, so any number of samples can be scored.

In a multi-process run (`evaluate` with the coordinator flags, muse_jax/distributed.py) the
mesh spans every process's devices and each process passes the same global batch (sampling and
reference loading are deterministic per batch index): each device computes its rows, and the
replicated outputs give every process the whole batch's. So every process accumulates the same
float64 sums, nothing is reduced across processes afterwards, and the result is one process's:
the metric networks' outputs to the last bit, the samples to the rounding of their one-device
decode (tests/test_multiprocess.py: 2 processes x 2 devices against 1 x 4). Chosen for
simplicity over each process taking its own rows: the metric networks are split over all
devices either way, but each process samples and decodes the whole batch on its first device
and reads every reference image, so extra processes speed up the metric networks only
(unmeasured).
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from muse_jax import parallel


class ShardedApply:
    """`fn(weights, *batch_arrays)` compiled once with the batch over all devices."""

    def __init__(self, fn: Callable, weights, mesh: jax.sharding.Mesh | None = None):
        self.mesh = mesh or parallel.create_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        self.shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        self.weights = parallel.put(weights, parallel.replicated(self.mesh))
        self._fn = jax.jit(fn, out_shardings=parallel.replicated(self.mesh))

    def __call__(self, *arrays):
        rows = len(arrays[0])
        pad = -rows % self.shards
        placed = []
        for a in arrays:
            a = np.asarray(a)
            if pad:
                a = np.concatenate([a, np.repeat(a[-1:], pad, axis=0)])
            placed.append(parallel.put(a, parallel.batch_sharding(self.mesh)))
        out = jax.device_get(self._fn(self.weights, *placed))
        return jax.tree.map(lambda o: np.asarray(o)[:rows], out)
