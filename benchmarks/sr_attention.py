"""Memory and time of one super-resolution sampling step: multi-axis against dense attention.

    .venv/bin/python benchmarks/sr_attention.py                 # 64x64 tokens, width 128, depth 2
    .venv/bin/python benchmarks/sr_attention.py --width=256 --depth=4 --repeats=5
    python benchmarks/sr_attention.py --width=1024 --depth=32 --heads=16 --batch=4 \\
        --low_res_depth=16 --dtype=bfloat16 --repeats=10   # sr_512's sizes, on a GPU

One decoding step of the SR sampler is the token pass of `SuperResTransformer` over 2B rows
(conditional and unconditional, classifier-free guidance) with the cross-attention keys and
values precomputed (`encode_context`, once per prompt, not timed). Both sides are the same
randomly initialised model, 64x64 high-res tokens (Muse's 512 px grid) and 16x16 low-res ones,
differing only in `window`: 8 (multi-axis: each query scores 64 keys in each half of the heads)
or 0 (dense: 4096 keys). A small width is enough to show the attention's share on a CPU; the
attention's cost does not depend on the width, the rest of the block's does, so at the paper's
width 1024 the ratios are smaller than here.

Reported per side: XLA's temporary buffer bytes of the compiled step (`memory_analysis()`:
activations, the attention scores among them; parameters are arguments and not counted) and
the median wall time of --repeats runs after a warm-up, runs alternating between the sides so
that load from other processes falls on both alike; then the dense / multi-axis ratios and one
JSON line.
"""
from __future__ import annotations

import json
import statistics
import time

from absl import app, flags

_WIDTH = flags.DEFINE_integer("width", 128, "Model width.")
_DEPTH = flags.DEFINE_integer("depth", 2, "High-res blocks.")
_HEADS = flags.DEFINE_integer("heads", 0, "Attention heads (0: width / 32; sr_512 has 16).")
_BATCH = flags.DEFINE_integer("batch", 1, "Images (the step runs 2x rows: guidance).")
_GRID = flags.DEFINE_integer("grid", 64, "High-res tokens per side (Muse 512 px: 64).")
_WINDOW = flags.DEFINE_integer("window", 8, "Multi-axis block and lattice side.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per side.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Activation dtype (parameters stay float32, as in training).")
_LOW_DEPTH = flags.DEFINE_integer("low_res_depth", 1, "Low-res encoder blocks (not timed: they "
                                  "run once per prompt in `encode_context`).")

CODEBOOK, LOW_GRID, TEXT_LEN, TEXT_DIM = 8192, 16, 64, 384


def build(window: int):
    """(compiled step, its args) for the SR token pass with `window` (0: dense attention)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from muse_jax.models.transformer import SuperResTransformer

    width, grid = _WIDTH.value, _GRID.value
    model = SuperResTransformer(codebook_size=CODEBOOK, grid=(grid, grid),
                                low_res_codebook_size=CODEBOOK, low_res_grid=(LOW_GRID, LOW_GRID),
                                width=width, depth=_DEPTH.value, low_res_depth=_LOW_DEPTH.value,
                                num_heads=_HEADS.value or width // 32,
                                mlp_dim=4 * width, window=window, dtype=jnp.dtype(_DTYPE.value))
    rows = 2 * _BATCH.value
    rng = jax.random.key(0)
    tokens = jax.random.randint(rng, (rows, grid * grid), 0, CODEBOOK + 1)
    low = jax.random.randint(rng, (rows, LOW_GRID ** 2), 0, CODEBOOK)
    text = jax.random.normal(rng, (rows, TEXT_LEN, TEXT_DIM))
    mask = jnp.ones((rows, TEXT_LEN), bool)
    params = nn.unbox(jax.jit(model.init)(rng, tokens[:1], text[:1], mask[:1], low[:1]))["params"]
    context = jax.jit(lambda p: model.apply({"params": p}, text, mask, low,
                                            method="encode_context"))(params)

    def step(params, tokens, context):
        return model.apply({"params": params}, tokens, context, method="logits")

    compiled = jax.jit(step).lower(params, tokens, context).compile()
    return compiled, (params, tokens, context)


def timed(compiled, args) -> float:
    import jax
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return time.perf_counter() - start


def main(argv) -> None:
    del argv
    import jax
    sides = {"multi_axis": build(_WINDOW.value), "dense": build(0)}
    memory = {name: compiled.memory_analysis().temp_size_in_bytes
              for name, (compiled, _) in sides.items()}
    times = {name: [] for name in sides}
    for name, (compiled, args) in sides.items():
        timed(compiled, args)  # warm-up
    for _ in range(_REPEATS.value):
        for name, (compiled, args) in sides.items():
            times[name].append(timed(compiled, args))
    median = {name: statistics.median(t) for name, t in times.items()}
    grid = _GRID.value
    print(f"SR sampling step, {grid}x{grid} tokens, width {_WIDTH.value}, depth {_DEPTH.value}, "
          f"{2 * _BATCH.value} rows (batch {_BATCH.value} x guidance), window {_WINDOW.value}, "
          f"{_DTYPE.value} on {jax.devices()[0].device_kind}")
    for name in sides:
        print(f"  {name:10s}  temp memory {memory[name] / 2**20:9.1f} MiB   "
              f"time {1e3 * median[name]:9.1f} ms")
    mem_ratio = memory["dense"] / max(memory["multi_axis"], 1)
    time_ratio = median["dense"] / median["multi_axis"]
    print(f"  dense / multi-axis: memory {mem_ratio:.1f}x, time {time_ratio:.1f}x")
    print(json.dumps({"grid": grid, "width": _WIDTH.value, "depth": _DEPTH.value,
                      "rows": 2 * _BATCH.value, "window": _WINDOW.value, "dtype": _DTYPE.value,
                      "device": jax.devices()[0].device_kind,
                      "temp_bytes": memory, "median_s": median,
                      "memory_ratio": mem_ratio, "time_ratio": time_ratio}))


if __name__ == "__main__":
    app.run(main)
