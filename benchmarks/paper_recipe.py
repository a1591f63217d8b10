"""Does the paper's optimiser recipe learn? Learning curves of Adafactor (Muse's settings) beside
AdamW on the same data, and the zero-gradient check of the weight decay.

  .venv/bin/python benchmarks/paper_recipe.py [--steps=300] [--workdir=workdirs/demo]

Needs the demo's tokenizer and precomputed inputs (`make demo`). Each optimiser trains
`configs/base_shapes.py:paper` (base_256's optimiser block, lr 1e-3, 50 warm-up steps) for the
same steps from the same init and data; printed: the final masked-token accuracy (mask rate
0.5 and 0.9) against the most-frequent-token baseline, and the train loss every 50 steps.
Writes benchmarks/paper_recipe.png (needs matplotlib: `pip install matplotlib`).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from muse_jax import config as config_lib  # noqa: E402
from muse_jax import demo, metrics, optimizers, training  # noqa: E402

VARIANTS = {  # name: optim overrides of base_shapes:paper
    "adafactor (Muse)": {},
    "adafactor + parameter scale": {"multiply_by_parameter_scale": True},
    "adamw": {"name": "adamw"},
}


def zero_gradient_weights(steps: int = 100) -> dict[str, float]:
    """A weight of 1 after `steps` warm-up steps of zero gradients, for each optimiser."""
    optim = config_lib.reference("base").optim
    optim.warmup_steps = steps
    lr = optimizers.learning_rate(optim, 10 * steps)
    candidates = {"optax.adafactor(weight_decay_rate=0.045) (before)":
                  optax.adafactor(lr, weight_decay_rate=optim.weight_decay),
                  "muse_jax adafactor (after)": optimizers.create(optim, 10 * steps)}
    optim.name = "adamw"
    candidates["muse_jax adamw"] = optimizers.create(optim, 10 * steps)
    out = {}
    for name, tx in candidates.items():
        params = {"w": jnp.ones((256, 256))}
        state = tx.init(params)
        for _ in range(steps):
            updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
            params = optax.apply_updates(params, updates)
        out[name] = float(params["w"][0, 0])
    return out


def recipe(workdir: str, steps: int, overrides: dict):
    c = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "paper")
    _, d = demo.configs(workdir)
    c.tokenizer.workdir = d.tokenizer.workdir
    for key in ("train_text_embeddings", "eval_text_embeddings", "train_tokens", "eval_tokens",
                "shapes_train_size", "eval_size"):
        c.data[key] = d.data[key]
    for key, value in overrides.items():
        c.optim[key] = value
    c.eval.num_samples = 0
    c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = steps
    c.train.log_every = 10
    return c


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workdir", default="workdirs/demo")
    parser.add_argument("--plot", default=str(Path(__file__).with_name("paper_recipe.png")))
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.workdir, "tokens_train")):
        sys.exit(f"error: {args.workdir} has no precomputed inputs: run `make demo` first")

    print("weight after 100 warm-up steps of zero gradients (lr 0 -> 1e-4, wd 0.045):")
    for name, value in zero_gradient_weights().items():
        print(f"  {name:50s} {value:.6f}")

    curves, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in VARIANTS.items():
            run_dir = os.path.join(tmp, name.split()[0] + str(len(curves)))
            start = time.perf_counter()
            result = training.train_and_evaluate(recipe(args.workdir, args.steps, overrides), run_dir)
            seconds = time.perf_counter() - start
            logged = metrics.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
            curves[name] = sorted((s, r["loss"]) for s, r in logged.items() if "loss" in r)
            rows.append((name, result["eval_accuracy_mask50"], result["eval_accuracy_mask90"],
                         result["eval_mode_accuracy"], seconds))

    print(f"\n{args.steps} steps each, base_shapes:paper on {args.workdir}'s inputs:")
    print(f"{'optimiser':30s} {'acc@0.5':>8s} {'acc@0.9':>8s} {'mode':>6s} {'s':>6s}")
    for name, a50, a90, mode, seconds in rows:
        print(f"{name:30s} {a50:8.3f} {a90:8.3f} {mode:6.3f} {seconds:6.0f}")
    print("\ntrain loss:")
    steps = [s for s, _ in next(iter(curves.values())) if s % 50 == 0 or s == 1]
    print(f"{'step':>6s} " + " ".join(f"{n[:14]:>14s}" for n in curves))
    for step in steps:
        print(f"{step:6d} " + " ".join(f"{dict(c)[step]:14.4f}" for c in curves.values()))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: no plot)")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot(*zip(*curve), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (masked tokens, label smoothing 0.1)")
    ax.set_title("base_shapes:paper: Muse's Adafactor beside AdamW")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
