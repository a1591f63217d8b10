"""Text-encoder figures: MiniLM throughput against PyTorch, and T5-XXL's sharded footprint.

    .venv/bin/python benchmarks/text_encoder_throughput.py                  # both parts
    .venv/bin/python benchmarks/text_encoder_throughput.py --part=throughput
    .venv/bin/python benchmarks/text_encoder_throughput.py --part=t5_xxl

throughput: all-MiniLM-L6-v2 on this machine's CPU cores, batch 64, 32 tokens, float32:
the jit-compiled Flax encoder (model only, and `encode()` end to end with tokenization)
beside transformers' PyTorch BertModel on the same token ids: median of --repeats rounds,
each round timing one batch of each, interleaved.

t5_xxl: the T5-XXL encoder (v1.1 / Flan, 4.7B parameters) built with `jax.eval_shape`
(nothing allocated) and sharded by the logical-axis rules on a simulated 8-device CPU mesh;
prints the parameter count and the bytes the most loaded device holds. Runs in a child
process with XLA_FLAGS=--xla_force_host_platform_device_count=8, so the throughput
numbers are taken on the plain single-device CPU backend.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

_PART = flags.DEFINE_enum("part", "all", ["all", "throughput", "t5_xxl"], "Which figure to measure.")
_BATCH = flags.DEFINE_integer("batch", 64, "Sentences per batch.")
_LENGTH = flags.DEFINE_integer("length", 32, "Tokens per sentence (padded / truncated).")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed batches per implementation.")

XLA_8_DEVICES = "--xla_force_host_platform_device_count=8"
SUBJECTS = ["a red square", "two blue circles", "an old lighthouse", "a small green triangle",
            "a golden retriever", "three yellow stars", "a wooden boat", "a city skyline"]
PLACES = ["on a white background", "at sunset", "next to a purple hexagon", "in the rain",
          "under a bright full moon", "drawn in thick black outlines", "on a crowded street"]


def captions(n: int) -> list[str]:
    """Varied caption-like sentences, long enough that most fill 32 tokens."""
    return [f"{SUBJECTS[i % len(SUBJECTS)]} {PLACES[i % len(PLACES)]}, "
            f"{SUBJECTS[(i * 3 + 1) % len(SUBJECTS)]} {PLACES[(i * 5 + 2) % len(PLACES)]}, "
            f"photo number {i}" for i in range(n)]


def median_seconds(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Median seconds per call of each fn, timed in interleaved rounds so that load from
    other processes on the machine falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def throughput() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax
    import numpy as np
    import torch
    import transformers

    from muse_jax.text import bert, create_encoder, default_config

    config = default_config()
    config.update(max_length=_LENGTH.value, batch_size=_BATCH.value)
    encoder = create_encoder(config)
    texts = captions(_BATCH.value)
    ids, mask = encoder.tokenize(texts)
    print(f"MiniLM throughput: batch {_BATCH.value}, {_LENGTH.value} tokens "
          f"({mask.sum(1).mean():.1f} real on average), float32, {os.cpu_count()} CPU cores, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}")

    ids_j, mask_j = jax.device_put(ids), jax.device_put(mask)
    torch.set_num_threads(os.cpu_count())
    model = transformers.BertModel.from_pretrained(str(bert.minilm_dir())).eval()
    ids_t, mask_t = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()

    def torch_forward():
        with torch.inference_mode():
            return model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state

    seconds = median_seconds({
        "flax": lambda: encoder._jit_apply(encoder.params, ids_j, mask_j).block_until_ready(),
        "encode": lambda: encoder.encode(texts),
        "torch": torch_forward,
    }, _REPEATS.value)
    flax_s, encode_s, torch_s = seconds["flax"], seconds["encode"], seconds["torch"]
    diff = np.abs(np.asarray(encoder._jit_apply(encoder.params, ids_j, mask_j))
                  - torch_forward().numpy() * mask[..., None]).max()
    b = _BATCH.value
    print(f"  flax (jit, model only)        {b / flax_s:8.1f} sentences/s  ({flax_s * 1e3:.1f} ms/batch)")
    print(f"  flax encode() incl. tokenizer {b / encode_s:8.1f} sentences/s  ({encode_s * 1e3:.1f} ms/batch)")
    torch_name = f"pytorch BertModel ({model.config._attn_implementation})"
    print(f"  {torch_name:29s} {b / torch_s:8.1f} sentences/s  ({torch_s * 1e3:.1f} ms/batch)")
    print(f"  flax / pytorch (model only): {torch_s / flax_s:.2f}x; max abs diff on real tokens {diff:.2g}")


def t5_xxl() -> None:
    import jax
    import jax.numpy as jnp

    from muse_jax import parallel
    from muse_jax.text import t5

    devices = jax.devices()
    print(f"T5-XXL encoder, eval_shape only, {len(devices)} simulated {devices[0].platform} devices:")
    for mesh_config in ({"data": 1, "fsdp": 8, "tensor": 1}, {"data": 1, "fsdp": 4, "tensor": 2}):
        mesh = parallel.create_mesh(mesh_config, devices)
        for dtype in (jnp.bfloat16, jnp.float32):
            abstract = parallel.abstract_sharded(t5.init_fn(t5.T5_XXL, dtype), mesh)
            count = sum(x.size for x in jax.tree.leaves(abstract))
            total = count * jnp.dtype(dtype).itemsize
            per_device = parallel.per_device_bytes(abstract)
            print(f"  mesh {dict(mesh.shape)} {jnp.dtype(dtype).name:8s}: {count:,} params, "
                  f"{total / 2**30:.2f} GiB total, {per_device / 2**30:.3f} GiB "
                  f"({per_device:,} bytes) on the most loaded device")


def main(argv) -> None:
    del argv
    if _PART.value in ("all", "throughput"):
        throughput()
    if _PART.value == "t5_xxl":
        assert "jax" not in sys.modules, "the device count must be set before jax starts"
        os.environ.update(XLA_FLAGS=XLA_8_DEVICES, JAX_PLATFORMS="cpu")
        t5_xxl()
    elif _PART.value == "all":  # a fresh process, since jax is already up with 1 device
        subprocess.run([sys.executable, __file__, "--part=t5_xxl"], check=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    app.run(main)
