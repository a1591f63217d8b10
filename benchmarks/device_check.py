"""The GPU check: paper-size train-step throughput and MFU, sampling and VQGAN-decoder latency, bf16.

    bash benchmarks/device_check.sh                 # on a lent H100 / H200: the whole check, < 8 min
    bash benchmarks/device_check.sh --smoke         # tiny sizes on any machine (the test runs this)
    python benchmarks/device_check.py --smoke --force_stub=grain

First run on a lent H200 (2026-12-04, jax 0.11.2; benchmarks/RESULTS.md, device_check): every
part ran, OOM halving was not needed (batch 128 peaked at 17.7 GiB). The base_256 step compiled in
183 s and its state took 82 s to build, so with the sampling models' own jitted inits (~85 s each,
now `random_params`) one 420 s budget did not reach every part.

What it measures, in bfloat16 compute wherever the configs' `model.dtype` keys say so
(parameters float32, as training and the checkpoints hold them):

1. train: the base masked transformer at configs/base_256.py's size (width 1280, 24 blocks of 16
   heads, MLP 5120, codebook 8192, 16x16 tokens, dropout 0.1, remat on, Adafactor, EMA: the
   config as it stands). The step is the project's own: `BaseTask` -> `MaskedTokenSteps.train_step`
   wrapped in `training.skip_nonfinite` and jitted exactly as `training.train_and_evaluate` does
   (in/out shardings, state donated), fed batches of precomputed inputs (random token ids and
   random text embeddings of width model.text_dim, --text_len tokens, all valid), the way a run
   with `data.train_tokens` and `data.*_text_embeddings` set is fed. One device, a 1x1x1 mesh.
   Model FLOPs are counted analytically: 6 x parameters x image tokens (256 an example) plus
   attention (3 x 4 x width x 256 x (256 + text_len) an example a block: scores and values,
   self and cross, forward + backward); remat's recomputation is not counted (MFU, not HFU).
   Also printed: every matmul counted one by one (benchmarks/base_step.py's `model_flops`) and
   XLA's own count of the compiled step (which includes the recomputation).
   MFU = model FLOPs / median step time / the device's dense bf16 peak, read by device kind from
   PEAK_BF16 in device_check_sizes.py (NVIDIA's datasheets give the figures with 2:4 sparsity; dense is half).
   The measured rate of a bf16 8192^3 matmul is printed beside it (an achievable ceiling: about
   770-800 TFLOP/s was seen on the lent H200).
2. sampling: `sampling.make_generate` (24 steps, guidance rising to 4: the classifier-free
   batch runs 2B rows) at base_256's size (T5-XXL width 4096 text) and at aMUSEd-256's
   (width 1024, 22 blocks, 16 heads, MLP 2816, CLIP-L width 768 text, 77 tokens) with random
   weights, batch 1 and 8: compile time, the first call, then the median of --repeats runs.
   aMUSEd-256 as the project's `MaskedTransformer` builds it: its dims taken as they are, but
   a plain GELU MLP of 2816 (aMUSEd's UVit2DModel has a GEGLU of 2816, 1.5x the MLP
   parameters), pre-LayerNorm blocks with biases, no U-ViT conv stages, no adaptive norms or
   micro-conditioning: about aMUSEd's token-pass cost, not its exact architecture.
3. decoder: the VQGAN decoder of configs/vqgan_256.py (8192 codes -> 256x256 px) for the same
   batches, in its config's dtype (float32: VQ decoding in half precision is known for NaNs)
   and, for comparison, bfloat16 (--decoder_dtypes).

--smoke: the same code at toy sizes (width 64, 2 blocks of 2 heads, MLP 256, codebook 1024,
8 text tokens of width 32, train batch 2, 2 decoding steps, sampling and decoder batch 2, a
32-channel VQGAN still decoding to 256 px, in float32 only), a few minutes at most on a loaded 2-core CPU.

Out of memory (RESOURCE_EXHAUSTED) halves the batch and says so; another error ends that part
only, recorded in the JSON. Each part is skipped, and says so, once less than its share of the
time budget (--budget_s) is left, and the JSON is rewritten after every part, so a run cut
short still leaves what it measured. Output: a table, one JSON line, and $OUT/device_check.json
when $OUT is set.

The device image lacks a package muse_jax imports at module level but this check never uses:
grain (checkpointing). Where it does not import, it is replaced by a stub that fails loudly if
used (`_StubModule` of base_step.py), and the JSON lists it. ml_collections (the configs) is
needed for real: device_check.sh installs it from a carried .whl folder (see there).
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from device_check_sizes import (amused_config, base_config, dims_of, peak_for,  # noqa: E402
                                train_flops, vqgan_config)

STUBBABLE = ("grain",)
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for the CPU test")
    p.add_argument("--batch", type=int, default=128, help="train batch (halved on OOM)")
    p.add_argument("--text_len", type=int, default=128, help="text tokens of the base model "
                   "(base_256's text.max_length is 64; 77..128 for T5/CLIP-style padding)")
    p.add_argument("--train_steps", type=int, default=10, help="timed train steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps/runs after compiling")
    p.add_argument("--sample_steps", type=int, default=24, help="base decoding steps (Muse: 24)")
    p.add_argument("--guidance", type=float, default=4.0, help="final guidance scale t")
    p.add_argument("--sample_batches", default="1,8", help="sampling / decoder batches")
    p.add_argument("--decoder_dtypes", default="float32,bfloat16", help="VQGAN decoder dtypes "
                   "(vqgan_256's model.dtype is float32; bfloat16 for comparison)")
    p.add_argument("--repeats", type=int, default=5, help="timed sampling / decoder runs")
    p.add_argument("--matmul", type=int, default=8192, help="side of the bf16 matmul timed")
    p.add_argument("--parts", default="matmul,train,sample,decoder", help="parts to run")
    p.add_argument("--budget_s", type=float, default=420.0, help="stop starting parts after this")
    p.add_argument("--force_stub", default="", help="modules to stub even if importable "
                   "(comma-separated, of %s): tests the device image's case" % ",".join(STUBBABLE))
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for device_check.json")
    p.add_argument("--allow_cpu", action="store_true", help="run the full sizes on a CPU too "
                   "(by default they refuse: a GPU that jax did not find falls back to the CPU)")
    p.add_argument("--fake_oom_above", type=int, default=0, help="tests only: train batches "
                   "above this raise a RESOURCE_EXHAUSTED error before anything is built")
    args = p.parse_args(argv)
    if args.smoke:  # the toy sizes, unless a flag says otherwise
        p.set_defaults(batch=2, text_len=8, train_steps=2, warmup=1, sample_steps=2, repeats=2,
                       matmul=256, sample_batches="2", decoder_dtypes="float32")
        args = p.parse_args(argv)
    args.sample_batches = [int(b) for b in args.sample_batches.split(",") if b]
    args.parts = [p for p in args.parts.split(",") if p]
    args.decoder_dtypes = [d for d in args.decoder_dtypes.split(",") if d]
    return args


# ------------------------------------------------------------------ imports
def stub_missing(forced: list[str]) -> list[str]:
    """Stubs grain where it cannot be imported (or is `forced`)."""
    from base_step import _StubModule  # noqa: PLC0415  (benchmarks/ is no package)

    stubbed = []
    for name in STUBBABLE:
        if name not in forced:
            try:
                importlib.import_module(name)
                continue
            except Exception:  # noqa: BLE001  missing or broken
                pass
        if name in sys.modules and isinstance(sys.modules[name], _StubModule):
            continue
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        stub = sys.modules[name] = _StubModule(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, stub)
        stubbed.append(name)
    return stubbed


def is_oom(e: BaseException) -> bool:
    return any(m in str(e) for m in OOM_MARKERS)


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400] if str(e).strip() else ''}"


def count(tree) -> int:
    import jax
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def random_params(init, key):
    """Weights shaped as `init(key)` returns them, drawn leaf by leaf: LayerNorm / GroupNorm
    scales 1, biases 0, the rest N(0, 0.02^2). Timing needs no faithful initialiser, and on the
    lent H200 (2026-12-04) jitting a 24-block model's own `init` took ~85 s a model (compiling
    its unrolled initialisers), which left two thirds of the sampling part unrun; one small
    program a leaf shape compiles in well under a second."""
    import jax

    abstract = jax.eval_shape(init, key)
    paths, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    keys = jax.random.split(key, len(paths))
    leaves = []
    for k, (path, leaf) in zip(keys, paths):
        name = str(getattr(path[-1], "key", path[-1]))
        leaves.append(_leaf(k, leaf.shape, leaf.dtype, name))
    return jax.tree_util.tree_unflatten(treedef, leaves)


_NORMAL_PROGRAMS: dict = {}  # (shape, dtype) -> jitted draw


def _leaf(key, shape, dtype, name: str):
    import jax
    import jax.numpy as jnp

    if name == "scale":
        return jnp.ones(shape, dtype)
    if name == "bias":
        return jnp.zeros(shape, dtype)
    if (shape, dtype) not in _NORMAL_PROGRAMS:
        _NORMAL_PROGRAMS[shape, dtype] = jax.jit(
            lambda k: (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(dtype))
    return _NORMAL_PROGRAMS[shape, dtype](key)


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


# ------------------------------------------------------------------ parts
def part_matmul(args, report):
    import jax
    import jax.numpy as jnp

    n = args.matmul
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.bfloat16)
    fn = jax.jit(jnp.matmul)
    jax.block_until_ready(fn(a, b))
    med, _ = median_time(lambda: jax.block_until_ready(fn(a, b)), 10)
    flops = 2 * n ** 3
    report["matmul"] = {"side": n, "dtype": "bfloat16", "median_s": med,
                        "tflops": flops / med / 1e12}


def train_once(args, c):
    """Builds the state and the project's jitted train step at `c`'s batch; times it."""
    import jax
    import numpy as np

    from muse_jax import parallel, tasks, training
    from muse_jax.tasks import base

    batch, n, l = c.data.batch_size, c.model.grid_size ** 2, c.text.max_length
    mesh = parallel.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    task = tasks.create(c)
    task.check_config()
    replicated = parallel.replicated(mesh)
    batch_sharding = parallel.batch_sharding(mesh)
    rng = np.random.default_rng(0)
    frozen_weights = parallel.put(
        {"empty_emb": rng.standard_normal((1, l, c.model.text_dim), np.float32),
         "empty_mask": np.ones((1, l), bool)}, replicated)
    models = base.FrozenModels(tokenizer=None, text_encoder=None, weights=frozen_weights)
    steps = base.MaskedTokenSteps(task.training, models, mesh, base.TextOnly())
    frozen = steps.frozen

    key = jax.random.key(c.seed)
    abstract = parallel.abstract_sharded(task.init_state, mesh, key)
    state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
    frozen_sharding = jax.tree.map(lambda x: x.sharding, frozen)
    start = time.perf_counter()
    state = steps.start_state(parallel.create_sharded(task.init_state, mesh, key)[0])
    jax.block_until_ready(state)
    init_s = time.perf_counter() - start
    params = count(state.params)

    def local_batch(i):
        r = np.random.default_rng(i)
        return {"tokens": r.integers(0, c.model.codebook_size, (batch, n)).astype(np.int32),
                "text_emb": r.standard_normal((batch, l, c.model.text_dim), np.float32),
                "text_mask": np.ones((batch, l), bool)}

    batches = [parallel.global_batch(steps.prepare_batch(local_batch(i)), batch_sharding)
               for i in range(2)]
    train_step = jax.jit(training.skip_nonfinite(steps.train_step),
                         in_shardings=(state_sharding, batch_sharding, replicated, frozen_sharding),
                         out_shardings=(state_sharding, replicated), donate_argnums=0)
    start = time.perf_counter()
    compiled = train_step.lower(state, batches[0], jax.random.key(0), frozen).compile()
    compile_s = time.perf_counter() - start
    xla_flops, temp_bytes = None, None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        xla_flops = float(cost.get("flops")) if cost and cost.get("flops") is not None else None
    except Exception:  # noqa: BLE001  not every backend reports it
        pass
    try:
        temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001
        pass

    box = {"state": state, "i": 0, "metrics": None}
    del state

    def step():
        i = box["i"] = box["i"] + 1
        box["state"], box["metrics"] = compiled(box["state"], batches[i % 2],
                                                jax.random.fold_in(key, i), frozen)
        jax.block_until_ready(box["metrics"])

    start = time.perf_counter()
    step()
    first_s = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        step()
    med, times = median_time(step, args.train_steps)
    metrics = {k: float(v) for k, v in jax.device_get(box["metrics"]).items()}
    flops = train_flops(c, batch, params)
    out = {"batch": batch, "params": params, "init_s": init_s, "compile_s": compile_s,
           "first_step_s": first_s, "step_s_median": med, "step_s_min": min(times),
           "steps_timed": len(times), "examples_per_s": batch / med,
           "image_tokens_per_s": batch * n / med, "model_flops": flops,
           "xla_flops": xla_flops, "temp_bytes": temp_bytes, "last_loss": metrics.get("loss"),
           "nonfinite": metrics.get("nonfinite"), "optimizer": c.optim.name,
           "dims": dims_of(c)}
    stats = memory_stats()
    if stats:
        out["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
        out["bytes_limit"] = stats.get("bytes_limit")
    box.clear()
    return out


def memory_stats() -> dict | None:
    import jax
    try:
        return jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001  CPU: not available
        return None


def with_halving(report, label: str, batch: int, attempt):
    """`attempt(batch)`, halving the batch on out-of-memory; None once nothing fits."""
    while batch >= 1:
        try:
            return attempt(batch)
        except Exception as e:  # noqa: BLE001
            gc.collect()
            if not is_oom(e) or batch == 1:
                raise
            note = f"{label}: batch {batch} ran out of memory ({error_text(e)}); halved to {batch // 2}"
            print("  " + note, flush=True)
            report["oom_halvings"].append(note)
            batch //= 2
    return None


def part_train(args, report):
    def attempt(batch):
        if args.fake_oom_above and batch > args.fake_oom_above:
            raise RuntimeError(f"RESOURCE_EXHAUSTED: fake, --fake_oom_above={args.fake_oom_above}")
        c = base_config(args)
        c.data.batch_size = batch
        return train_once(args, c)

    out = with_halving(report, "train", args.batch, attempt)
    if out is None:
        return
    out["model_tflops_per_s"] = (out["model_flops"]["six_pt_plus_attention"]
                                 / out["step_s_median"] / 1e12)
    if report.get("peak_bf16") and out["dims"]["dtype"] == "bfloat16":
        peak = report["peak_bf16"]
        for key, value in out["model_flops"].items():
            if key != "attention":
                out.setdefault("mfu", {})[key] = value / out["step_s_median"] / peak
        if out["xla_flops"]:
            out["hfu_xla"] = out["xla_flops"] / out["step_s_median"] / peak
    if report.get("matmul"):
        out["of_measured_matmul"] = (out["model_flops"]["six_pt_plus_attention"]
                                     / out["step_s_median"] / (report["matmul"]["tflops"] * 1e12))
    report["train"] = out


def sample_once(args, c, batch: int, name: str, cache: dict) -> dict:
    """`make_generate` at `c`'s size; the random weights are made once a model (`cache`)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from muse_jax import sampling
    from muse_jax.tasks import base

    model = base.build_model(c)
    n, l, d = c.model.grid_size ** 2, c.text.max_length, c.model.text_dim
    k_model, k_emb, k_neg = jax.random.split(jax.random.key(0), 3)
    emb = jax.random.normal(k_emb, (batch, l, d), jnp.float32)
    mask = jnp.ones((batch, l), bool)
    empty = jax.random.normal(k_neg, (1, l, d), jnp.float32)
    empty_mask = jnp.ones((1, l), bool)
    canvas = jnp.full((batch, n), model.mask_id, jnp.int32)
    if name not in cache:
        cache.clear()  # one model's weights on the device at a time
        start = time.perf_counter()
        params = random_params(lambda k: nn.unbox(
            model.init(k, canvas[:1], emb[:1], mask[:1])["params"]), k_model)
        cache[name] = params, time.perf_counter() - start
    params, init_s = cache[name]
    options = sampling.SamplingOptions(steps=args.sample_steps, guidance=args.guidance)
    generate = sampling.make_generate(model, options)
    start = time.perf_counter()
    compiled = generate.lower(params, emb, mask, empty, empty_mask, jax.random.key(1), canvas).compile()
    compile_s = time.perf_counter() - start
    counter = iter(range(2, 1 << 30))
    run = lambda: jax.block_until_ready(  # noqa: E731
        compiled(params, emb, mask, empty, empty_mask, jax.random.key(next(counter)), canvas))
    start = time.perf_counter()
    tokens = run()
    first_s = time.perf_counter() - start
    assert tokens.shape == (batch, n) and int(jnp.max(tokens)) < model.mask_id, "unfilled canvas"
    for _ in range(args.warmup - 1):
        run()
    med, times = median_time(run, args.repeats)
    return {"model": name, "batch": batch, "steps": args.sample_steps, "guidance": args.guidance,
            "params": count(params), "init_s": init_s,
            "compile_s": compile_s, "first_call_s": first_s,
            "median_s": med, "min_s": min(times), "runs": len(times),
            "ms_per_image": 1e3 * med / batch, "ms_per_step": 1e3 * med / args.sample_steps,
            "images_per_s": batch / med, "dims": dims_of(c)}


def decode_once(args, c, batch: int, dtype: str, cache: dict) -> dict:
    """The VQGAN decoder in `dtype`; its (float32) weights are made once (`cache`)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from muse_jax.models.vqgan import VQGAN
    from muse_jax.tasks import vqgan as vqgan_task

    c.model.dtype = dtype
    vq = vqgan_task.build_model(c)
    grid = 16
    ids = jax.random.randint(jax.random.key(3), (batch, grid, grid), 0, c.model.codebook_size)
    if "vq" not in cache:
        cache["vq"] = random_params(
            lambda k: nn.unbox(vq.init(k, ids[:1], method=VQGAN.decode)["params"]), jax.random.key(4))
    params = cache["vq"]
    fn = jax.jit(lambda p, t: vq.apply({"params": p}, t, method=VQGAN.decode))
    start = time.perf_counter()
    compiled = fn.lower(params, ids).compile()
    compile_s = time.perf_counter() - start
    run = lambda: jax.block_until_ready(compiled(params, ids))  # noqa: E731
    images = run()
    assert images.shape == (batch, 256, 256, 3), images.shape
    finite = bool(jnp.all(jnp.isfinite(images)))
    for _ in range(args.warmup - 1):
        run()
    med, times = median_time(run, args.repeats)
    return {"batch": batch, "dtype": dtype, "compile_s": compile_s, "median_s": med,
            "min_s": min(times), "runs": len(times), "ms_per_image": 1e3 * med / batch,
            "finite": finite, "params": count(params)}


# ------------------------------------------------------------------ driver
class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def write(report, args) -> None:
    """Rewrites $OUT/device_check.json (after every part, so a run cut short leaves some)."""
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "device_check.json"), "w") as f:
            json.dump(report, f, indent=1)


def run_part(report, args, budget, name, need_s, fn, *fargs):
    """Runs one part unless the budget is short; records its error instead of raising."""
    if budget.left() < need_s:
        note = f"{name}: skipped, {budget.left():.0f} s of the budget left (needs ~{need_s:.0f} s)"
        print("  " + note, flush=True)
        report["skipped"].append(note)
        return None
    start = time.perf_counter()
    print(f"[{budget.elapsed():6.1f} s] {name} ...", flush=True)
    try:
        out = fn(*fargs)
    except Exception as e:  # noqa: BLE001  one part's failure must not lose the others
        report["errors"].append({"part": name, "error": error_text(e),
                                 "traceback": traceback.format_exc()[-3000:]})
        print(f"  {name} FAILED: {error_text(e)}", flush=True)
        out = None
    print(f"[{budget.elapsed():6.1f} s] {name} done in {time.perf_counter() - start:.1f} s",
          flush=True)
    report["elapsed_s"] = round(budget.elapsed(), 2)
    write(report, args)
    gc.collect()
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    sys.path.insert(0, REPO)
    import muse_jax  # noqa: F401  (its __init__ quietens TensorFlow, should anything import it)

    forced = [s for s in args.force_stub.split(",") if s]
    stubbed = stub_missing(forced)
    try:
        import ml_collections  # noqa: F401
    except ImportError:
        sys.exit("device_check: ml_collections is missing (the configs need it): carry its wheel "
                 "in .whl/ (see benchmarks/device_check.sh)")
    import jax

    dev = jax.devices()[0]
    kind = dev.device_kind
    if dev.platform == "cpu" and not (args.smoke or args.allow_cpu):
        sys.exit(f"device_check: jax found no accelerator (devices: {jax.devices()}); the full "
                 f"sizes would take hours on a CPU. Check the CUDA plugin (python3 -c 'import "
                 f"jax; print(jax.devices())'), or pass --smoke / --allow_cpu")
    peak, source = peak_for(kind)
    report = {"benchmark": "device_check", "smoke": args.smoke, "complete": False,
              "jax_version": jax.__version__, "platform": dev.platform, "device_kind": kind,
              "devices": [d.device_kind for d in jax.devices()], "peak_bf16": peak,
              "peak_source": source, "stubbed_modules": stubbed, "args": {
                  k: v for k, v in vars(args).items() if k != "out"},
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "oom_halvings": [], "skipped": [],
              "errors": [], "train": None, "sampling": [], "decoder": [], "matmul": None}
    print(f"device_check{' (smoke)' if args.smoke else ''}: jax {jax.__version__}, "
          f"{len(jax.devices())} x {kind} ({dev.platform}); bf16 peak "
          f"{'-' if peak is None else f'{peak / 1e12:.1f} TFLOP/s'} ({source}); stubbed: "
          f"{', '.join(stubbed) or 'none'}", flush=True)
    write(report, args)
    # Shares of the budget each part needs to be started (a paper-size compile is ~1 min).
    scale = 0.02 if args.smoke else 1.0
    if "matmul" in args.parts:
        run_part(report, args, budget, "matmul", 10 * scale, part_matmul, args, report)
    if "train" in args.parts:
        run_part(report, args, budget, "train", 150 * scale, part_train, args, report)
    weights: dict = {}  # random weights, made once a model
    if "sample" in args.parts:
        for name, make in (("base_256", base_config), ("amused_256", amused_config)):
            for batch in args.sample_batches:
                def attempt(b, make=make, name=name):
                    return sample_once(args, make(args), b, name, weights)
                out = run_part(report, args, budget, f"sample {name} batch {batch}", 45 * scale,
                               with_halving, report, f"sample {name}", batch, attempt)
                if out:
                    report["sampling"].append(out)
    weights.clear()
    if "decoder" in args.parts:
        for dtype in args.decoder_dtypes:
            for batch in args.sample_batches:
                def attempt(b, dtype=dtype):
                    return decode_once(args, vqgan_config(args), b, dtype, weights)
                out = run_part(report, args, budget, f"decoder {dtype} batch {batch}", 20 * scale,
                               with_halving, report, f"decoder {dtype}", batch, attempt)
                if out:
                    report["decoder"].append(out)
    report["complete"] = not report["errors"] and not report["skipped"]
    report["elapsed_s"] = round(budget.elapsed(), 2)
    write(report, args)
    print_table(report)
    print(json.dumps({k: v for k, v in report.items() if k != "errors"}
                     | {"errors": [{"part": e["part"], "error": e["error"]} for e in report["errors"]]}))
    return report


def print_table(r: dict) -> None:
    def ms(s):
        return "-" if s is None else f"{1e3 * s:.1f}"

    print(f"\n== device_check: {r['device_kind']} ({r['platform']}), jax {r['jax_version']}, "
          f"{r['elapsed_s']:.0f} s ==")
    if r["matmul"]:
        m = r["matmul"]
        print(f"bf16 matmul {m['side']}^3: {m['tflops']:.3g} TFLOP/s")
    t = r["train"]
    if t:
        d = t["dims"]
        mfu = t.get("mfu", {})
        print(f"train step  base_256 w{d['width']} d{d['depth']} h{d['heads']} mlp{d['mlp']} "
              f"{d['dtype']} remat={d['remat']} {t['optimizer']}, {t['params'] / 1e6:.1f}M params, "
              f"batch {t['batch']} x ({d['grid'] ** 2} image + {d['text_len']} text tokens)")
        print(f"  compile {t['compile_s']:.1f} s, step {ms(t['step_s_median'])} ms median "
              f"(min {ms(t['step_s_min'])}), {t['examples_per_s']:.1f} examples/s, "
              f"{t['image_tokens_per_s']:.0f} image tokens/s, {t['model_tflops_per_s']:.2f} "
              f"model TFLOP/s")
        if mfu:
            print(f"  MFU {100 * mfu['six_pt_plus_attention']:.1f} % (6PT + attention), "
                  f"{100 * mfu['matmul_count']:.1f} % (matmuls counted), vs peak "
                  f"{r['peak_bf16'] / 1e12:.1f} TFLOP/s; XLA-counted (with remat) "
                  f"{100 * t.get('hfu_xla', float('nan')):.1f} %")
        if t.get("of_measured_matmul") is not None:
            print(f"  {100 * t['of_measured_matmul']:.1f} % of the measured bf16 matmul rate")
        if t.get("peak_bytes_in_use"):
            print(f"  device memory peak {t['peak_bytes_in_use'] / 2 ** 30:.1f} GiB of "
                  f"{(t.get('bytes_limit') or 0) / 2 ** 30:.1f} GiB")
    if r["sampling"]:
        print(f"{'sampling':<12}{'batch':>6}{'params':>9}{'steps':>6}{'compile s':>10}"
              f"{'median ms':>11}{'ms/image':>10}{'ms/step':>9}{'images/s':>10}")
        for s in r["sampling"]:
            print(f"{s['model']:<12}{s['batch']:>6}{s['params'] / 1e6:>8.1f}M{s['steps']:>6}"
                  f"{s['compile_s']:>10.1f}{1e3 * s['median_s']:>11.1f}{s['ms_per_image']:>10.1f}"
                  f"{s['ms_per_step']:>9.2f}{s['images_per_s']:>10.2f}")
    if r["decoder"]:
        print(f"{'VQGAN dec.':<12}{'batch':>6}{'dtype':>10}{'compile s':>10}{'median ms':>11}"
              f"{'ms/image':>10}  finite")
        for s in r["decoder"]:
            print(f"{'vqgan_256':<12}{s['batch']:>6}{s['dtype']:>10}{s['compile_s']:>10.1f}"
                  f"{1e3 * s['median_s']:>11.1f}{s['ms_per_image']:>10.1f}  {s['finite']}")
    for note in r["oom_halvings"] + r["skipped"]:
        print(f"note: {note}")
    for e in r["errors"]:
        print(f"ERROR in {e['part']}: {e['error']}")


if __name__ == "__main__":
    main()
