"""Sampler throughput: muse_jax's compiled decoding loop beside diffusers' AmusedPipeline.

    .venv/bin/python benchmarks/sampler.py            # batch 4, 3 timed runs a side
    .venv/bin/python benchmarks/sampler.py --quick    # batch 1, 1 timed run a side
    .venv/bin/python benchmarks/sampler.py --steps=24 --batch=2 --repeats=5
    .venv/bin/python benchmarks/sampler.py --codebook=8192   # Muse's and aMUSEd's codebook

Both sides are randomly initialised and the same size: a masked token transformer of width
512, depth 8, 8 heads, MLP 2048, 16x16 tokens, codebook --codebook (muse_jax `MaskedTransformer`,
diffusers `UVit2DModel` with the smallest conv stages its API allows: `--amused_res_blocks`,
default 0), then a VQ decoder from 16x16 tokens to 256x256 pixels with four 2x up stages and
the channels of aMUSEd's VQ-GAN (128, 256, 256, 512, 768 from full resolution down, 64-d
codes; muse_jax `VQGAN.decode` with 3 res blocks a level against diffusers' `VQModel`, whose
up blocks hold layers_per_block + 1 = 3 resnets). No text encoder runs on either side: random
[B, 77, 768] text embeddings (and pooled [B, 768] ones for aMUSEd) go in as precomputed
embeddings, with random negative embeddings for the unconditional half. Both sides run the
conditional and unconditional passes as one batch of 2B at every step; muse_jax's guidance
t = --guidance corresponds to aMUSEd's guidance_scale 1 + t ((1 + t) c - t u = u + (1 + t)(c - u)).

Runs alternate (muse_jax, aMUSEd, muse_jax, ...) after one untimed warm-up each (JIT
compilation excluded), so load from other processes falls on both alike. Each run times the
token loop (muse_jax: the jit-compiled `generate`, text keys/values included; aMUSEd: the
pipeline from its call until it calls the VQ decoder) and the VQ decoder separately. Prints
medians: ms an image, images/s, ms a decoding step of the whole batch (token loop / steps) and
the decoder's share of the whole, then one JSON line. float32 on the CPU, torch with
os.cpu_count() threads.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags

_QUICK = flags.DEFINE_bool("quick", False, "Short rerun: batch 1, one timed run a side.")
_BATCH = flags.DEFINE_integer("batch", 4, "Images per run (the transformer sees 2x: guidance).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per side.")
_STEPS = flags.DEFINE_integer("steps", 12, "Decoding steps (aMUSEd's default 12; Muse base: 24).")
_GUIDANCE = flags.DEFINE_float("guidance", 4.0, "muse_jax's final guidance t; aMUSEd gets 1 + t.")
_CODEBOOK = flags.DEFINE_integer("codebook", 1024, "Codebook size of both sides (Muse's and "
                                 "aMUSEd's VQ-GANs: 8192, where drawing the tokens weighs more).")
_RES_BLOCKS = flags.DEFINE_integer("amused_res_blocks", 0, "UVit2DModel conv (ConvNeXt) blocks "
                                   "before and after the transformer layers.")

WIDTH, DEPTH, HEADS, MLP, GRID = 512, 8, 8, 2048, 16
TEXT_LEN, TEXT_DIM = 77, 768
DECODER_CHANNELS = (128, 256, 256, 512, 768)  # full resolution -> tokens, as aMUSEd's VQ-GAN
CODE_DIM, DECODER_RES_BLOCKS = 64, 3


def count(tree) -> int:
    import jax
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def build_muse_jax(batch: int, steps: int, guidance: float, codebook: int, seed: int = 0):
    """A run function returning (token loop seconds, decoder seconds), and parameter counts."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from muse_jax import sampling
    from muse_jax.models.transformer import MaskedTransformer
    from muse_jax.models.vqgan import VQGAN

    model = MaskedTransformer(codebook_size=codebook, grid=(GRID, GRID), width=WIDTH, depth=DEPTH,
                              num_heads=HEADS, mlp_dim=MLP)
    base = DECODER_CHANNELS[0]
    vq = VQGAN(channels=base, channel_mult=tuple(c // base for c in DECODER_CHANNELS),
               num_res_blocks=DECODER_RES_BLOCKS, codebook_size=codebook, code_dim=CODE_DIM)
    k_model, k_vq, k_emb, k_neg = jax.random.split(jax.random.key(seed), 4)
    emb = jax.random.normal(k_emb, (batch, TEXT_LEN, TEXT_DIM))
    neg = jax.random.normal(k_neg, (batch, TEXT_LEN, TEXT_DIM))
    mask = jnp.ones((batch, TEXT_LEN), bool)  # CLIP's 77 positions, all attended, as in aMUSEd
    canvas = jnp.full((batch, GRID * GRID), model.mask_id, jnp.int32)
    params = jax.jit(lambda k: nn.unbox(model.init(k, canvas, emb, mask)["params"]))(k_model)
    ids = jnp.zeros((batch, GRID, GRID), jnp.int32)
    vq_params = jax.jit(lambda k: nn.unbox(vq.init(k, ids, method=VQGAN.decode)["params"]))(k_vq)

    generate = sampling.make_generate(model, sampling.SamplingOptions(steps=steps, guidance=guidance))
    decode = jax.jit(lambda p, t: vq.apply({"params": p}, t.reshape(-1, GRID, GRID), method=VQGAN.decode))
    counter = iter(range(1 << 30))

    def run():
        start = time.perf_counter()
        tokens = generate(params, emb, mask, neg, mask, jax.random.key(next(counter)), canvas)
        tokens.block_until_ready()
        middle = time.perf_counter()
        images = decode(vq_params, tokens).block_until_ready()
        assert images.shape == (batch, 256, 256, 3)
        return middle - start, time.perf_counter() - middle

    cost = decode.lower(vq_params, jnp.zeros_like(canvas)).compile().cost_analysis()  # a dict
    return run, {"transformer_params": count(params), "decoder_params": count(vq_params),
                 "decoder_gflop_per_image": cost["flops"] / 1e9 / batch}


def conv_rates(batch: int = 4, size: int = 128, channels: int = 128, repeats: int = 3) -> dict:
    """GFLOP/s of one 3x3 convolution (the decoder's bulk), XLA and torch: the ceiling a
    decoder of such convolutions can reach on this machine, whichever framework runs it."""
    import jax
    import torch

    flops = 2 * 9 * batch * size * size * channels * channels
    x = jax.random.normal(jax.random.key(0), (batch, size, size, channels))
    w = jax.random.normal(jax.random.key(1), (3, 3, channels, channels))
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    xt, convt = torch.randn(batch, channels, size, size), torch.nn.Conv2d(channels, channels, 3,
                                                                         padding=1, bias=False)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return flops / min(times) / 1e9

    with torch.no_grad():
        return {"xla_conv_gflops": best(lambda: conv(x, w).block_until_ready()),
                "torch_conv_gflops": best(lambda: convt(xt))}


def build_amused(batch: int, steps: int, guidance: float, res_blocks: int, codebook: int,
                 seed: int = 0):
    """AmusedPipeline with random UVit2DModel / VQModel; the decoder is timed by a wrapper."""
    import torch
    from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel, VQModel

    torch.manual_seed(seed)
    transformer = UVit2DModel(
        hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
        intermediate_size=MLP, codebook_size=codebook, vocab_size=codebook + 1,
        encoder_hidden_size=TEXT_DIM, cond_embed_dim=TEXT_DIM, in_channels=WIDTH,
        block_out_channels=WIDTH, num_res_blocks=res_blocks, block_num_heads=HEADS,
        sample_size=GRID).eval()
    vqvae = VQModel(
        down_block_types=("DownEncoderBlock2D",) * len(DECODER_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(DECODER_CHANNELS),
        block_out_channels=DECODER_CHANNELS, layers_per_block=DECODER_RES_BLOCKS - 1,
        latent_channels=CODE_DIM, num_vq_embeddings=codebook, norm_num_groups=32,
        mid_block_add_attention=False, lookup_from_codebook=True).eval()
    pipe = AmusedPipeline(vqvae=vqvae, tokenizer=None, text_encoder=None, transformer=transformer,
                          scheduler=AmusedScheduler(mask_token_id=codebook))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 16
    emb = torch.randn(batch, TEXT_LEN, TEXT_DIM)
    neg = torch.randn(batch, TEXT_LEN, TEXT_DIM)
    pooled, neg_pooled = torch.randn(batch, TEXT_DIM), torch.randn(batch, TEXT_DIM)

    marks, counter = [], iter(range(1 << 30))
    plain_decode = vqvae.decode

    def timed_decode(*args, **kwargs):
        marks.append(time.perf_counter())
        out = plain_decode(*args, **kwargs)
        marks.append(time.perf_counter())
        return out

    vqvae.decode = timed_decode

    def run():
        marks.clear()
        start = time.perf_counter()
        images = pipe(prompt_embeds=pooled, encoder_hidden_states=emb,
                      negative_prompt_embeds=neg_pooled, negative_encoder_hidden_states=neg,
                      num_inference_steps=steps, guidance_scale=1.0 + guidance,
                      generator=torch.Generator().manual_seed(next(counter)), output_type="pt").images
        end = time.perf_counter()
        assert tuple(images.shape) == (batch, 3, 256, 256)
        # The token loop runs until the decoder is called; what follows it (clip,
        # postprocessing) counts as decoding.
        return marks[0] - start, end - marks[0]

    decoder_params = sum(p.numel() for m in (vqvae.quantize, vqvae.post_quant_conv, vqvae.decoder)
                         for p in m.parameters())
    return run, {"transformer_params": sum(p.numel() for p in transformer.parameters()),
                 "decoder_params": decoder_params}


def alternate(runs: dict, repeats: int, warmup: int = 1) -> dict:
    """(token loop s, decoder s) of each timed run of each side, the sides taking turns."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runs}
    for i in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
            loop, dec = times[name][-1]
            print(f"  run {i + 1}/{repeats} {name:9s} token loop {loop:7.2f} s, decoder {dec:6.2f} s",
                  flush=True)
    return times


def summarize(times, batch: int, steps: int, sizes: dict) -> dict:
    """Medians over the runs; ms_per_step is one step of the whole batch (2B rows: guidance)."""
    loop = statistics.median(t[0] for t in times)
    dec = statistics.median(t[1] for t in times)
    total = statistics.median(t[0] + t[1] for t in times)
    return {"ms_per_image": 1e3 * total / batch, "images_per_s": batch / total,
            "token_loop_ms_per_image": 1e3 * loop / batch, "ms_per_step": 1e3 * loop / steps,
            "decoder_ms_per_image": 1e3 * dec / batch, "decoder_share": dec / total,
            "runs": len(times), **sizes}


def main(argv) -> None:
    del argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers
    import jax
    import torch

    batch, repeats = (1, 1) if _QUICK.value else (_BATCH.value, _REPEATS.value)
    steps, guidance = _STEPS.value, _GUIDANCE.value
    torch.set_num_threads(os.cpu_count())
    print(f"Sampler: batch {batch}, {steps} steps, guidance t={guidance} (aMUSEd scale "
          f"{1 + guidance}), {GRID}x{GRID} tokens of {_CODEBOOK.value} codes -> 256x256, float32, "
          f"{os.cpu_count()} CPU cores, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), diffusers {diffusers.__version__}", flush=True)
    jax_run, jax_sizes = build_muse_jax(batch, steps, guidance, _CODEBOOK.value)
    torch_run, torch_sizes = build_amused(batch, steps, guidance, _RES_BLOCKS.value,
                                          _CODEBOOK.value)
    times = alternate({"muse_jax": jax_run, "amused": torch_run}, repeats)
    ours = summarize(times["muse_jax"], batch, steps, jax_sizes)
    theirs = summarize(times["amused"], batch, steps, torch_sizes)
    for name, r in (("muse_jax", ours), ("amused", theirs)):
        print(f"  {name:9s} {r['images_per_s']:6.3f} images/s ({r['ms_per_image']:8.0f} ms/image): "
              f"token loop {r['token_loop_ms_per_image']:7.0f} ms/image, {r['ms_per_step']:6.0f} "
              f"ms/step (of all {2 * batch} rows); VQ decoder {r['decoder_ms_per_image']:6.0f} ms/image "
              f"({100 * r['decoder_share']:.0f}% of the time); params: transformer "
              f"{r['transformer_params'] / 1e6:.1f}M, decoder {r['decoder_params'] / 1e6:.1f}M")
    speedup = theirs["ms_per_image"] / ours["ms_per_image"]
    loop_speedup = theirs["ms_per_step"] / ours["ms_per_step"]
    decoder_speedup = theirs["decoder_ms_per_image"] / ours["decoder_ms_per_image"]
    print(f"  muse_jax / aMUSEd images/s: {speedup:.2f}x (aim: 2x); token loop {loop_speedup:.2f}x, "
          f"VQ decoder {decoder_speedup:.2f}x")
    rates = conv_rates()
    decoder_gflops = ours["decoder_gflop_per_image"] / (ours["decoder_ms_per_image"] / 1e3)
    print(f"  VQ decoder: {ours['decoder_gflop_per_image']:.0f} GFLOP an image (XLA's count), "
          f"muse_jax at {decoder_gflops:.0f} GFLOP/s; one 3x3 conv (128 channels, 128x128, batch "
          f"4): XLA {rates['xla_conv_gflops']:.0f}, torch {rates['torch_conv_gflops']:.0f} GFLOP/s")
    print(json.dumps({"benchmark": "sampler", "batch": batch, "steps": steps, "guidance": guidance,
                      "codebook": _CODEBOOK.value,
                      "amused_guidance_scale": 1 + guidance, "amused_res_blocks": _RES_BLOCKS.value,
                      "cpu_count": os.cpu_count(), "muse_jax": ours, "amused": theirs,
                      "speedup": speedup, "token_loop_speedup": loop_speedup,
                      "decoder_speedup": decoder_speedup, "decoder_gflops": decoder_gflops,
                      **rates}))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "tests"))
    from torch_refs import stub_meta_registrations
    stub_meta_registrations()  # diffusers imports transformers, which imports torchvision
    from muse_jax import host_memory
    host_memory.keep_freed_memory()  # as `python -m muse_jax.sample` does; both sides get it
    app.run(main)
