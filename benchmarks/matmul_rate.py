"""The machine's float32 matmul rate, the yardstick of the benchmarks' utilisation figures.

A model whose time is all matmuls cannot beat a peer by more than the ratio of their
utilisations of the same rate: base_step.py and amused_import.py time these square matmuls in
the same run as the models, so both share whatever load the machine had.
"""
from __future__ import annotations

import time


def matmul_timer(m: int, k: int, n: int, batch: int = 0):
    """A jitted f32 (batched) matmul: returns (run, flops)."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(7))
    lead = (batch,) if batch else ()
    a = jax.random.normal(keys[0], lead + (m, k), jnp.float32)
    b = jax.random.normal(keys[1], lead + (k, n), jnp.float32)
    fn = jax.jit(jnp.matmul)
    fn(a, b).block_until_ready()
    return (lambda: fn(a, b).block_until_ready()), 2 * max(batch, 1) * m * k * n


def torch_matmul_timer(size: int):
    """The same square f32 matmul in torch, for reference."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    return lambda: a @ b


def square_rates(size: int = 2048, timings: int = 5) -> dict:
    """Best FLOP/s of a jitted and a torch f32 matmul of side `size` over `timings` timings of
    >= ~0.2 s each: the least disturbed. (One median read after aMUSEd's batch-8 runs gave 206
    GFLOP/s where the readings before and after gave 441-443: a yardstick must not sag.)"""
    reps = max(1, round(1.5e10 / (2 * size ** 3)))
    run_jax, flops = matmul_timer(size, size, size)
    rates = {}
    for name, run in (("jax", run_jax), ("torch", torch_matmul_timer(size))):
        seconds = []
        for _ in range(timings):
            start = time.perf_counter()
            for _ in range(reps):
                run()
            seconds.append((time.perf_counter() - start) / reps)
        rates[name] = flops / min(seconds)
    return rates
