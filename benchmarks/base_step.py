"""One base-transformer training step: muse_jax beside diffusers' UVit2DModel and
muse-maskgit-pytorch's MaskGitTransformer, on this machine's CPU cores, float32.

    .venv/bin/python benchmarks/base_step.py                    # 5 rounds of 1 step each
    .venv/bin/python benchmarks/base_step.py --quick            # 2 rounds, no breakdown
    .venv/bin/python benchmarks/base_step.py --rounds=8 --steps=2 --peers=diffusers
    .venv/bin/python benchmarks/base_step.py --maskgit_flash    # the peer's own default attention

The peers need `pip install -e .[bench]` and `pip install --no-deps muse-maskgit-pytorch==0.3.5`
(see setup.py for why --no-deps).

The step, the same for all three: width 512, 8 blocks of 8 heads, MLP 2048 (GEGLU 1365 in
the peers: within 0.1% of its parameters and FLOPs), 16x16 = 256 image tokens from a
codebook of 1024 (+ [MASK]), 77 text tokens of width 768 (all valid), batch 8. Each step
draws a mask rate r = sin(pi/2 u) per example, masks round(r * 256) random tokens, runs the
forward pass, the masked-token cross-entropy (label smoothing 0.1), the backward pass,
global-norm clipping at 1 and an AdamW update (lr 1e-4, betas 0.9 / 0.96, weight decay 0.045).
Inputs are precomputed random token ids and text embeddings: no VQGAN, no text encoder.
Unlike muse_jax's real `BaseTask.train_step`, there is no dropout (the peers' defaults
have none), no caption dropout and no EMA update.

  muse_jax   MaskedTransformer, the step jit-compiled with its state donated.
  diffusers  UVit2DModel(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
             intermediate_size=1365, num_res_blocks=0, in_channels=block_out_channels=512):
             with no res blocks the conv stages reduce to 1x1 convolutions / linears of width
             512 around the transformer (4 extra 512x512 matmuls on the tokens). Its blocks
             also carry adaptive norms (a linear of the pooled text embedding per norm: 1.5M
             parameters a block, negligible FLOPs), RMSNorm, no biases, no mask on the text.
             pooled_text_emb and micro_conds are zeros. Attention is torch's SDPA.
  maskgit    MaskGitTransformer(num_tokens=1024, dim=512, depth=8, heads=8, dim_head=64,
             seq_len=256): l2-normalised q/k, a learned null key/value, GEGLU, no biases.
             Its T5 lookup is replaced by a text width of 768 registered beforehand, so no
             hub call happens; the text is projected 768 -> 512 like the others. Attention
             is its einsum path by default, the faster one here (--maskgit_flash: memory-
             efficient-attention-pytorch's chunked kernel, the library's default on CPU too,
             took 2.5x as long for attention forward + backward on the 2-core test machine).

Timing: one warm-up step per system after compilation, then --rounds rounds, each timing
--steps steps of every system in turn (the order rotating from round to round), then jitted
1024^2 and 2048^2 float32 matmuls (and torch's, for reference); medians are reported. Model
FLOPs are counted analytically for the muse_jax model (every matmul of the forward pass,
attention scores and values included, times 3 for forward + backward; XLA's own count is
printed beside it); utilisation = FLOPs / median step time / the median rate of the faster
jitted matmul (on the 2-core test machine the 2048^2 one was at times well below the
model's own matmul shapes), utilisation_vs_torch_matmul the same against torch's faster one,
and utilisation_best = FLOPs / fastest step / fastest matmul (the least disturbed of each,
when other processes share the cores).
--breakdown (on by default) then times, in 3 interleaved rounds of its own, the JAX forward
pass alone, forward + backward without the optimiser, the optimiser update alone, the whole
step, the square matmul and matmuls of the model's own shapes (projections, MLP, attention
scores, logits).

The package imports of muse-maskgit-pytorch reach torchvision, vector-quantize-pytorch,
accelerate and ema-pytorch, which only its VQGAN-VAE and trainers use. PyPI's torchvision
wheels are CUDA builds pinned to one torch each (0.28.0's _C.so needs libtorch_cuda.so, absent
from the CPU torch 2.13 wheel), so any of those four that cannot be imported is replaced by an
empty stub module before the import; MaskGitTransformer touches none of them. The stubs used
are listed in the output.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import json
import math
import os
import platform
import statistics
import sys
import time
import types

from absl import app, flags

from matmul_rate import matmul_timer, torch_matmul_timer

_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds (each times every system in turn).")
_STEPS = flags.DEFINE_integer("steps", 1, "Steps of each system timed per round.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps of each system after compilation.")
_QUICK = flags.DEFINE_bool("quick", False, "2 rounds, 1 step each, no breakdown.")
_BREAKDOWN = flags.DEFINE_bool("breakdown", True, "Time JAX forward / forward+backward and "
                               "the matmul rate at the model's shapes too.")
_PEERS = flags.DEFINE_list("peers", ["diffusers", "maskgit"], "Peers to time (empty: none).")
_MASKGIT_FLASH = flags.DEFINE_bool("maskgit_flash", False, "MaskGitTransformer with flash=True "
                                   "(memory-efficient-attention-pytorch's chunked attention).")
_BATCH = flags.DEFINE_integer("batch", 8, "Batch size.")
_WIDTH = flags.DEFINE_integer("width", 512, "Transformer width.")
_DEPTH = flags.DEFINE_integer("depth", 8, "Transformer blocks.")
_HEADS = flags.DEFINE_integer("heads", 8, "Attention heads.")
_MLP = flags.DEFINE_integer("mlp_dim", 2048, "MLP hidden width (GEGLU peers: 2/3 of it).")
_GRID = flags.DEFINE_integer("grid", 16, "Image tokens per side.")
_CODEBOOK = flags.DEFINE_integer("codebook", 1024, "Codebook size ([MASK] = codebook).")
_TEXT_LEN = flags.DEFINE_integer("text_len", 77, "Text tokens.")
_TEXT_DIM = flags.DEFINE_integer("text_dim", 768, "Text-embedding width.")
_MATMUL = flags.DEFINE_list("matmul_sizes", ["1024", "2048"], "Sides of the square f32 "
                            "matmuls timed each round; the fastest jitted one is the reference.")

LR, BETAS, WEIGHT_DECAY, CLIP, LABEL_SMOOTHING = 1e-4, (0.9, 0.96), 0.045, 1.0, 0.1
MASKGIT_TEXT_NAME = "precomputed-text-embeddings"  # a key in its T5 config cache, not a model
STUBBED_FOR_MASKGIT = ("torchvision", "torchvision.transforms", "torchvision.datasets",
                       "torchvision.utils", "vector_quantize_pytorch", "accelerate", "ema_pytorch")


class Dims:
    def __init__(self):
        self.batch, self.width, self.depth, self.heads = (_BATCH.value, _WIDTH.value,
                                                          _DEPTH.value, _HEADS.value)
        self.mlp, self.grid, self.codebook = _MLP.value, _GRID.value, _CODEBOOK.value
        self.tokens = self.grid * self.grid
        self.text_len, self.text_dim = _TEXT_LEN.value, _TEXT_DIM.value

    def as_dict(self):
        return dict(vars(self))


def model_flops(d: Dims) -> dict:
    """Matmul FLOPs (2 m n k each) of one forward pass of muse_jax's MaskedTransformer."""
    b, n, l, w, f = d.batch, d.tokens, d.text_len, d.width, d.mlp
    mm = lambda m, k, o: 2 * m * k * o  # noqa: E731
    self_attn = mm(b * n, w, 3 * w) + 2 * mm(b * n, n, w) + mm(b * n, w, w)
    cross_attn = mm(b * n, w, w) + mm(b * l, w, 2 * w) + 2 * mm(b * n, l, w) + mm(b * n, w, w)
    mlp = 2 * mm(b * n, w, f)
    forward = (mm(b * l, d.text_dim, w) + d.depth * (self_attn + cross_attn + mlp)
               + mm(b * n, w, d.codebook))
    return {"forward": forward, "train_step": 3 * forward,
            "per_block": {"self_attention": self_attn, "cross_attention": cross_attn, "mlp": mlp}}


# ------------------------------------------------------------------------------- muse_jax
def build_jax(d: Dims):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from muse_jax import masking
    from muse_jax.models.transformer import MaskedTransformer

    model = MaskedTransformer(codebook_size=d.codebook, grid=(d.grid, d.grid), width=d.width,
                              depth=d.depth, num_heads=d.heads, mlp_dim=d.mlp, dropout=0.0,
                              dtype=jnp.float32, remat=False)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, d.codebook, (d.batch, d.tokens)), jnp.int32)
    emb = jnp.asarray(rng.standard_normal((d.batch, d.text_len, d.text_dim)), jnp.float32)
    text_mask = jnp.ones((d.batch, d.text_len), bool)
    params = model.init(jax.random.key(0), tokens[:1], emb[:1], text_mask[:1])["params"]
    tx = optax.chain(optax.clip_by_global_norm(CLIP),
                     optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], weight_decay=WEIGHT_DECAY))
    state = {"params": params, "opt_state": tx.init(params)}

    def masked_inputs(rng):
        rng_rate, rng_mask = jax.random.split(rng)
        rate = masking.sample_mask_rate(rng_rate, (d.batch,))
        mask = masking.random_mask(rng_mask, d.batch, d.tokens, rate)
        return jnp.where(mask, d.codebook, tokens), mask

    def loss_fn(params, inputs, mask):
        logits = model.apply({"params": params}, inputs, emb, text_mask, deterministic=True)
        return masking.masked_cross_entropy(logits, tokens, mask, LABEL_SMOOTHING)

    def train_step(state, rng):
        inputs, mask = masked_inputs(rng)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], inputs, mask)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates),
                "opt_state": opt_state}, loss

    def grad_only(params, rng):
        inputs, mask = masked_inputs(rng)
        return jax.value_and_grad(loss_fn, has_aux=True)(params, inputs, mask)

    def forward_only(params, rng):
        inputs, _ = masked_inputs(rng)
        return model.apply({"params": params}, inputs, emb, text_mask, deterministic=True)

    step = jax.jit(train_step, donate_argnums=(0,))
    compiled = step.lower(state, jax.random.key(1)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    box = {"state": state, "i": 0}

    def run():
        box["i"] += 1
        box["state"], loss = compiled(box["state"], jax.random.key(box["i"]))
        return float(loss)  # blocks until the step is done

    def optimizer_only(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    extra = {"grad_only": jax.jit(grad_only), "forward_only": jax.jit(forward_only),
             "optimizer_only": jax.jit(optimizer_only)}
    count = sum(x.size for x in jax.tree.leaves(params))
    return run, count, {"xla_cost_analysis_flops": float(cost.get("flops", float("nan"))),
                        "box": box, "fns": extra}


# ------------------------------------------------------------------------------- peers
def torch_inputs(d: Dims):
    import numpy as np
    import torch

    rng = np.random.default_rng(0)  # the same ids and text as muse_jax
    tokens = torch.from_numpy(rng.integers(0, d.codebook, (d.batch, d.tokens))).long()
    emb = torch.from_numpy(rng.standard_normal((d.batch, d.text_len, d.text_dim))).float()
    return tokens, emb


def torch_step_fn(d: Dims, model, logits_fn, tokens):
    """A train step closure: mask, forward, masked CE, backward, clip, AdamW."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS,
                                  weight_decay=WEIGHT_DECAY, fused=True)
    model.train()

    def run():
        rate = torch.sin(0.5 * math.pi * torch.rand(d.batch))
        count = (rate * d.tokens).round().clamp(1, d.tokens)
        ranks = torch.rand(d.batch, d.tokens).argsort(-1).argsort(-1)
        mask = ranks < count[:, None]
        inputs = torch.where(mask, d.codebook, tokens)
        labels = torch.where(mask, tokens, -100)
        logits = logits_fn(inputs)  # [B, K, N] or [B, K, h, w]
        loss = F.cross_entropy(logits, labels.view(logits.shape[:1] + logits.shape[2:]),
                               ignore_index=-100, label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        return float(loss.detach())

    return run


def used_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.grad is not None)


def build_diffusers(d: Dims):
    import torch
    from diffusers import UVit2DModel

    torch.manual_seed(0)
    model = UVit2DModel(hidden_size=d.width, use_bias=False, hidden_dropout=0.0,
                        cond_embed_dim=d.text_dim, encoder_hidden_size=d.text_dim,
                        vocab_size=d.codebook + 1, codebook_size=d.codebook,
                        in_channels=d.width, block_out_channels=d.width, num_res_blocks=0,
                        downsample=False, upsample=False, block_num_heads=d.heads,
                        num_hidden_layers=d.depth, num_attention_heads=d.heads,
                        attention_dropout=0.0, intermediate_size=int(d.mlp * 2 / 3),
                        sample_size=d.grid)
    tokens, emb = torch_inputs(d)
    pooled = torch.zeros(d.batch, d.text_dim)
    micro_conds = torch.zeros(d.batch, model.config.micro_cond_embed_dim
                              // model.config.micro_cond_encode_dim)

    def logits_fn(inputs):
        return model(inputs.view(d.batch, d.grid, d.grid), emb, pooled, micro_conds)

    processors = sorted({type(p).__name__ for p in model.attn_processors.values()})
    return (torch_step_fn(d, model, logits_fn, tokens), model,
            {"attention_processors": processors})


def import_maskgit():
    """muse_maskgit_pytorch's classes, with empty stubs for VQGAN/trainer-only imports.

    transformers is imported first, so that it settles on torchvision being absent before any
    stub exists, and the stubs leave sys.modules once muse_maskgit_pytorch holds them.
    """
    from transformers import T5Config, T5EncoderModel, T5Tokenizer  # noqa: F401

    stubbed = []
    for name in STUBBED_FOR_MASKGIT:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - not installed, or (torchvision) a CUDA-only build
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]
            stub = _StubModule(name)
            sys.modules[name] = stub
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, stub)
            stubbed.append(name)
    try:
        import muse_maskgit_pytorch
        from muse_maskgit_pytorch import t5 as maskgit_t5
    finally:
        for name in stubbed:
            del sys.modules[name]
    return muse_maskgit_pytorch, maskgit_t5, stubbed


class _StubModule(types.ModuleType):
    """Any attribute is a placeholder that fails loudly if it is ever used."""

    def __init__(self, name):
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)
        self.__path__ = []

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{attr} is a benchmark stub (see base_step.py)")

        return type(attr, (), {"__init__": unavailable, "__call__": unavailable})


def build_maskgit(d: Dims):
    import torch
    from transformers import T5Config

    package, maskgit_t5, stubbed = import_maskgit()
    # get_encoded_dim(name) reads this cache before asking the hub for T5Config(name).
    maskgit_t5.T5_CONFIGS[MASKGIT_TEXT_NAME] = {"config": T5Config(d_model=d.text_dim)}
    torch.manual_seed(0)
    model = package.MaskGitTransformer(num_tokens=d.codebook, dim=d.width, seq_len=d.tokens,
                                       t5_name=MASKGIT_TEXT_NAME, depth=d.depth, heads=d.heads,
                                       dim_head=d.width // d.heads, ff_mult=d.mlp / d.width,
                                       flash=_MASKGIT_FLASH.value)
    tokens, emb = torch_inputs(d)

    def logits_fn(inputs):
        return model(inputs, text_embeds=emb).transpose(1, 2)  # [B, N, K] -> [B, K, N]

    return (torch_step_fn(d, model, logits_fn, tokens), model,
            {"import_stubs": stubbed, "flash": _MASKGIT_FLASH.value,
             "note": "self_cond_to_init_embed (a FeedForward built even with self_cond=False) "
                     "is in the total but gets no gradient"})


# ------------------------------------------------------------------------------- timing
def timed(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def breakdown(jax_run, jax_extra, d: Dims, rounds: int = 3) -> dict:
    """Where the JAX step's time goes: forward alone, forward + backward (no optimiser) and
    the whole step, then the matmul rate at the model's own shapes beside the square one's,
    all in interleaved rounds."""
    import jax

    key = jax.random.key(123)
    state = lambda: jax_extra["box"]["state"]  # noqa: E731 - each step donates the last one
    params = lambda: state()["params"]  # noqa: E731
    grads = jax.tree.map(lambda p: 1e-3 * p, params())  # stand-in gradients, own buffers
    fns = {"forward": lambda: jax.block_until_ready(jax_extra["fns"]["forward_only"](params(), key)),
           "forward_backward": lambda: jax.block_until_ready(
               jax_extra["fns"]["grad_only"](params(), key)),
           "optimizer": lambda: jax.block_until_ready(jax_extra["fns"]["optimizer_only"](
               params(), state()["opt_state"], grads)),
           "step": jax_run,
           "matmul": jax_extra["matmul"]}
    n, w = d.batch * d.tokens, d.width
    shapes = {  # the matmuls of one block's forward pass, and the logits
        f"qkv_projection [{n}x{w}]x[{w}x{3 * w}]": (n, w, 3 * w, 0),
        f"mlp_in [{n}x{w}]x[{w}x{d.mlp}]": (n, w, d.mlp, 0),
        f"mlp_out [{n}x{d.mlp}]x[{d.mlp}x{w}]": (n, d.mlp, w, 0),
        f"self_attention_scores {d.batch * d.heads}x[{d.tokens}x{w // d.heads}]x"
        f"[{w // d.heads}x{d.tokens}]": (d.tokens, w // d.heads, d.tokens, d.batch * d.heads),
        f"cross_attention_scores {d.batch * d.heads}x[{d.tokens}x{w // d.heads}]x"
        f"[{w // d.heads}x{d.text_len}]": (d.tokens, w // d.heads, d.text_len, d.batch * d.heads),
        f"logits [{n}x{w}]x[{w}x{d.codebook}]": (n, w, d.codebook, 0),
    }
    shape_flops = {}
    for name, (m, k, o, b) in shapes.items():
        fns[name], shape_flops[name] = matmul_timer(m, k, o, b)
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            reps = 1 if name in ("forward", "forward_backward", "step") else 3
            times[name].append(timed(fn, reps))
    t = {name: statistics.median(v) for name, v in times.items()}
    rate = jax_extra["matmul_flops"] / t["matmul"]
    flops = model_flops(d)
    return {
        "rounds": rounds,
        "forward_ms": t["forward"] * 1e3,
        "forward_backward_ms": t["forward_backward"] * 1e3,
        "step_ms": t["step"] * 1e3,
        "optimizer_ms": t["optimizer"] * 1e3,  # clipping + AdamW alone, not donated
        "reference_matmul_gflops": rate / 1e9,
        "forward_utilisation": flops["forward"] / t["forward"] / rate,
        "forward_backward_utilisation": flops["train_step"] / t["forward_backward"] / rate,
        "step_utilisation": flops["train_step"] / t["step"] / rate,
        "matmul_gflops_at_model_shapes": {name: shape_flops[name] / t[name] / 1e9
                                          for name in shapes},
    }


def main(argv) -> None:
    del argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from muse_jax import host_memory

    # As every muse_jax command does (muse_jax.errors.run), before JAX starts its threads; the
    # peers run in this process under the same settings. MUSE_JAX_MALLOC=default: glibc's own.
    malloc = "muse_jax.host_memory" if host_memory.keep_freed_memory() else "glibc default"
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "tests"))
    from torch_refs import stub_meta_registrations
    stub_meta_registrations()  # diffusers imports transformers, which imports torchvision
    import jax
    import torch

    rounds, steps = (2, 1) if _QUICK.value else (_ROUNDS.value, _STEPS.value)
    d = Dims()
    torch.set_num_threads(os.cpu_count())
    load_start = os.getloadavg()
    print(f"base step: {d.as_dict()}, float32; {os.cpu_count()} CPU cores "
          f"({platform.processor() or platform.machine()}); jax {jax.__version__} on "
          f"{jax.devices()[0].platform}, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; malloc: {malloc}; load average {load_start}",
          flush=True)

    systems, params, info = {}, {}, {}
    t0 = time.perf_counter()
    run, params["muse_jax"], jax_extra = build_jax(d)
    info["muse_jax"] = {"compile_s": time.perf_counter() - t0,
                        "xla_cost_analysis_flops": jax_extra["xla_cost_analysis_flops"]}
    systems["muse_jax"] = run
    models = {}
    for peer in _PEERS.value:
        builder = {"diffusers": build_diffusers, "maskgit": build_maskgit}[peer]
        systems[peer], models[peer], info[peer] = builder(d)
        params[peer] = sum(p.numel() for p in models[peer].parameters())
    matmuls = {}  # name -> (run, flops, reps)
    for size in map(int, _MATMUL.value):
        reps = max(1, round(1.5e10 / (2 * size ** 3)))  # >= ~0.2 s a timing
        run_jax, mm_flops = matmul_timer(size, size, size)
        matmuls[f"jax_{size}"] = (run_jax, mm_flops, reps)
        matmuls[f"torch_{size}"] = (torch_matmul_timer(size), mm_flops, reps)

    for name, fn in systems.items():
        for _ in range(_WARMUP.value):
            fn()
    for peer, model in models.items():
        info[peer]["params_with_grad"] = used_params(model)
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()), flush=True)

    times = {name: [] for name in systems}
    mm_rates = {name: [] for name in matmuls}
    names = list(systems)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(timed(systems[name], steps))
        for name, (fn, mm_flops, reps) in matmuls.items():
            mm_rates[name].append(mm_flops / statistics.median(timed(fn, reps) for _ in range(3)))
        print(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {times[n][-1] * 1e3:.0f} ms" for n in names) + "; matmul GFLOP/s " + ", ".join(
            f"{n} {v[-1] / 1e9:.1f}" for n, v in mm_rates.items()), flush=True)

    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    rate = {name: statistics.median(v) for name, v in mm_rates.items()}
    reference = max((n for n in rate if n.startswith("jax_")), key=rate.get)
    torch_best = max((n for n in rate if n.startswith("torch_")), key=rate.get)
    jax_extra.update(matmul=matmuls[reference][0], matmul_flops=matmuls[reference][1])
    flops = model_flops(d)
    achieved = flops["train_step"] / (ms["muse_jax"] / 1e3)
    figures = {
        "config": {**d.as_dict(), "dtype": "float32", "label_smoothing": LABEL_SMOOTHING,
                   "rounds": rounds, "steps_per_round": steps, "warmup": _WARMUP.value},
        "machine": {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "jax_threads": f"XLA CPU default (its own pool over {os.cpu_count()} cores)",
                    "jax": jax.__version__, "torch": torch.__version__,
                    "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "params": params,
        "median_ms_per_step": ms,
        "samples_ms_per_step": {n: [round(t * 1e3, 1) for t in ts] for n, ts in times.items()},
        "ratio_peer_ms_over_muse_jax_ms": {n: ms[n] / ms["muse_jax"] for n in ms
                                           if n != "muse_jax"},
        "model_flops_per_step": flops["train_step"],
        "model_flops_forward": flops["forward"],
        "matmul_gflops_median": {n: v / 1e9 for n, v in rate.items()},
        "matmul_gflops_samples": {n: [round(x / 1e9, 1) for x in v] for n, v in mm_rates.items()},
        "matmul_reference": reference,
        "muse_jax_achieved_gflops": achieved / 1e9,
        # model FLOPs / median step / median rate of the fastest jitted square matmul
        "muse_jax_utilisation": achieved / rate[reference],
        "muse_jax_utilisation_vs_torch_matmul": achieved / rate[torch_best],
        # the least disturbed of each: fastest step against the fastest reference matmul
        "muse_jax_utilisation_best": flops["train_step"] / min(times["muse_jax"])
                                     / max(mm_rates[reference]),
        "info": info,
    }
    if len(ms) > 1:
        fastest = min((n for n in ms if n != "muse_jax"), key=ms.get)
        figures["speedup_over_faster_peer"] = {"peer": fastest,
                                               "ratio": ms[fastest] / ms["muse_jax"]}
    if _BREAKDOWN.value and not _QUICK.value:
        figures["muse_jax_breakdown"] = breakdown(systems["muse_jax"], jax_extra, d)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    app.run(main)
