"""Imported aMUSEd-256 (random weights): muse_jax's sampler against diffusers' AmusedPipeline.

    .venv/bin/python benchmarks/amused_import.py                 # batch 1 and 8, 2 timed runs a side
    .venv/bin/python benchmarks/amused_import.py --batches=1 --repeats=1

Both sides run the same weights at the real aMUSEd-256 architecture: a random AmusedPipeline
(UVit2DModel at its defaults, 22 layers of 1024; aMUSEd's VQModel, f=16, 8192 codes; a CLIP-L/14
text tower with projection; a tiny stand-in tokenizer, which changes no shape: every prompt is
padded to 77 tokens) is saved with `save_pretrained` and imported with muse_jax.import_diffusers,
as a real checkpoint would be. Each run is the whole text-to-image call: prompts (and the empty
negative prompt) through CLIP, 12 steps at guidance 10 with AmusedScheduler's conventions (muse_jax:
`--preset=amused`; transformer passes of `--rows_per_pass` rows, one compiled loop), the VQ
decoder in float32. Runs alternate (muse_jax, diffusers, ...) after one
untimed warm-up each (JIT compilation excluded), so load from other processes falls on both alike.

Beside each batch size's runs, the machine's float32 matmul rate (matmul_rate.py, 2048^2,
jitted and torch) and the FLOPs of one call (XLA's cost analysis of a transformer pass x the
steps, plus the VQ decode): each side's share of that rate bounds what it could still gain,
since both do the same matmuls.

Then the compiled memory analysis (XLA's `memory_analysis()`, nothing run) of muse_jax's sampling
call at each batch size and of one training step (AdamW, masked cross-entropy) at batch 8.
Prints a table and one JSON line. float32 on the CPU; torch with os.cpu_count() threads. The
machine is shared with other jobs: compare the ratios, not the absolute times.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Images per call.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs per side and batch size.")
_STEPS = flags.DEFINE_integer("steps", 12, "Decoding steps (AmusedPipeline's default).")
_ROWS = flags.DEFINE_integer("rows_per_pass", 2, "muse_jax's SamplingOptions.rows_per_pass: rows "
                             "each transformer pass takes (0: all 2 x batch at once).")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
PROMPT = "a photograph of an astronaut riding a horse"


def tiny_tokenizer(path: Path):
    import transformers

    chars = list(string.ascii_lowercase) + ["."]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    for token in ("<|startoftext|>", "<|endoftext|>", "!"):
        vocab[token] = len(vocab)
    path.mkdir(parents=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"),
                                      pad_token="!", model_max_length=77)


def amused_256(root: Path):
    import diffusers
    import torch
    import transformers

    torch.manual_seed(0)
    text = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=77, projection_dim=768,
        eos_token_id=55)).eval()
    vq = diffusers.VQModel(block_out_channels=[128, 256, 256, 512, 768],
                           down_block_types=["DownEncoderBlock2D"] * 5,
                           up_block_types=["UpDecoderBlock2D"] * 5, layers_per_block=2,
                           latent_channels=64, num_vq_embeddings=8192, norm_num_groups=32,
                           mid_block_add_attention=False, lookup_from_codebook=True,
                           force_upcast=True).eval()
    return diffusers.AmusedPipeline(vqvae=vq, tokenizer=tiny_tokenizer(root / "tok"),
                                    text_encoder=text,
                                    transformer=diffusers.UVit2DModel(sample_size=16).eval(),
                                    scheduler=diffusers.AmusedScheduler(mask_token_id=8255))


def memory(compiled) -> dict:
    m = compiled.memory_analysis()
    gib = lambda b: round(b / 2**30, 3)  # noqa: E731
    return {"arguments_gib": gib(m.argument_size_in_bytes), "outputs_gib": gib(m.output_size_in_bytes),
            "temp_gib": gib(m.temp_size_in_bytes)}


def flops(compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def sampling_flops(pipe, batch: int, steps: int) -> float:
    """FLOPs of one guided text-to-image call: `steps` transformer passes over 2 x batch rows
    (conditional and unconditional) and the VQ decode. XLA's cost analysis counts a while
    loop's body once, so the passes are counted from one forward and multiplied; CLIP (12
    layers over 77 tokens, under 1 % of the rest) is left out."""
    import jax
    import jax.numpy as jnp

    n, length = pipe.grid ** 2, pipe.text_encoder.length
    forward = jax.jit(lambda p, t, e: pipe.model.apply({"params": p}, t, e, None)).lower(
        pipe.params, jax.ShapeDtypeStruct((2 * batch, n), jnp.int32),
        jax.ShapeDtypeStruct((2 * batch, length, 768), jnp.float32)).compile()
    decode = jax.jit(lambda p, ids: pipe.tokenizer.apply(
        {"params": p}, ids, method=pipe.tokenizer.decode)).lower(
        pipe.tokenizer_params, jax.ShapeDtypeStruct((batch, pipe.grid, pipe.grid), jnp.int32)).compile()
    return steps * flops(forward) + flops(decode)


def train_step_memory(pipe, batch: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from muse_jax import masking

    model, tx = pipe.model, optax.adamw(1e-4)
    n, length = pipe.grid ** 2, pipe.text_encoder.length

    def step(params, opt_state, tokens, emb, mask):
        def loss(p):
            inputs = jnp.where(mask, model.mask_id, tokens)
            logits = model.apply({"params": p}, inputs, emb, None)
            return masking.masked_cross_entropy(logits, tokens, mask, 0.1)[0]
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pipe.params)
    opt_state = jax.eval_shape(tx.init, params)
    args = (params, opt_state, jax.ShapeDtypeStruct((batch, n), jnp.int32),
            jax.ShapeDtypeStruct((batch, length, 768), jnp.float32),
            jax.ShapeDtypeStruct((batch, n), bool))
    return memory(jax.jit(step, donate_argnums=(0, 1)).lower(*args).compile())


def main(argv) -> None:
    del argv
    from torch_refs import stub_meta_registrations
    stub_meta_registrations()  # transformers' CLIP imports torchvision: see tests/torch_refs.py
    import jax
    import numpy as np
    import torch

    from muse_jax import diffusers_import, inference, sampling

    from matmul_rate import square_rates

    torch.set_num_threads(os.cpu_count())
    options = dataclasses.replace(sampling.AMUSED, steps=_STEPS.value,
                                  rows_per_pass=_ROWS.value)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reference = amused_256(root)
        reference.save_pretrained(root / "src")
        run = diffusers_import.import_amused(root / "src", root / "run")
        ours = inference.load(str(run))

        def run_ours(batch):
            tokens = inference.sample_tokens(ours, [PROMPT] * batch, options, seed=0, batch_size=batch)
            return ours.decode(tokens)

        def run_theirs(batch, steps=_STEPS.value):
            with torch.no_grad():
                return reference([PROMPT] * batch, num_inference_steps=steps,
                                 guidance_scale=10.0, output_type="np").images

        rows, report = [], {"benchmark": "amused_import", "steps": _STEPS.value,
                            "rows_per_pass": _ROWS.value,
                            "cpu_count": os.cpu_count(), "batches": {}}
        matmul = square_rates()
        for batch in (int(b) for b in _BATCHES.value if b):
            run_ours(batch), run_theirs(batch, 1)  # warm-up: compilation (torch: allocations)
            times = {"muse_jax": [], "diffusers": []}
            for _ in range(_REPEATS.value):
                for name, fn in (("muse_jax", run_ours), ("diffusers", run_theirs)):
                    start = time.perf_counter()
                    images = fn(batch)
                    times[name].append(time.perf_counter() - start)
                    assert np.asarray(images).shape[0] == batch
            rate = {k: batch / statistics.median(v) for k, v in times.items()}
            # Read again after the runs, under the same load; the best reading so far (one can sag).
            matmul = {k: max(v, matmul[k]) for k, v in square_rates().items()}
            work = sampling_flops(ours, batch, _STEPS.value)
            # Both sides do the same FLOPs (same architecture, same steps, same guidance).
            utilisation = {k: work * r / batch / matmul["jax"] for k, r in rate.items()}
            generate = ours.generator(options)
            emb, mask = ours.encode_text([PROMPT] * batch)
            uncond = ours.encode_text([""])
            compiled = generate.lower(ours.params, emb, mask, *uncond, jax.random.key(0),
                                      ours.blank(batch)).compile()
            report["batches"][batch] = {"images_per_s": rate, "speedup": rate["muse_jax"] / rate["diffusers"],
                                        "seconds": times, "sampling_memory": memory(compiled),
                                        "gflop_per_call": work / 1e9,
                                        "matmul_gflops": {k: v / 1e9 for k, v in matmul.items()},
                                        "utilisation_of_jax_matmul": utilisation}
            rows.append(f"| {batch} | {rate['muse_jax']:.4f} | {rate['diffusers']:.4f} | "
                        f"{rate['muse_jax'] / rate['diffusers']:.2f}x | "
                        f"{100 * utilisation['muse_jax']:.0f} % | {100 * utilisation['diffusers']:.0f} % |")
            print(rows[-1], json.dumps(report["batches"][batch]), flush=True)
        report["train_step_memory_batch_8"] = train_step_memory(ours, 8)
    print("| batch | muse_jax images/s | diffusers images/s | ratio | muse_jax of the matmul rate "
          "| diffusers of it |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    for batch, b in report["batches"].items():
        print(f"sampling memory at batch {batch}: {b['sampling_memory']}")
    print(f"one training step at batch 8 (AdamW): {report['train_step_memory_batch_8']}")
    print(json.dumps(report))


if __name__ == "__main__":
    app.run(main)
