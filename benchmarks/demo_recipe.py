"""What the demo's base-model budget buys: recipe variants on the demo's own inputs, scored by
the shapes oracle on held-out prompts in the canonical wording and in phrasings training never used.

    make demo    # once: the tokenizer and the precomputed inputs under workdirs/demo
    .venv/bin/python benchmarks/demo_recipe.py --out=/tmp/demo_recipe
    .venv/bin/python benchmarks/demo_recipe.py --variants=demo,text_blocks --steps=600
    .venv/bin/python benchmarks/demo_recipe.py --variants=demo --steps=1500 --checkpoint_every=500

Each variant is configs/base_shapes.py:demo with overrides (`VARIANTS`), trained from the demo's
precomputed caption embeddings and tokens (`--inputs`) for `--steps` (its cosine schedule
spans them), then every kept checkpoint (`--checkpoint_every`; the last 3) is scored with
`evaluate --eval=shapes_oracle` and `--eval=shapes_phrasings` (24 steps, guidance rising to
`--guidance`, each run's own by default, the same seed for every variant). Prints one JSON line a
scored checkpoint and a Markdown table; finished runs are reused on a rerun. Runs one after
another: on 2 cores, two at once take longer in total than in turn.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("inputs", "workdirs/demo", "A demo workdir: vqgan_shapes, minilm_*, tokens_*.")
flags.DEFINE_string("out", "/tmp/demo_recipe", "Where the runs go.")
flags.DEFINE_list("variants", ["demo", "text_blocks", "sincos"], "Names in VARIANTS.")
flags.DEFINE_integer("steps", 600, "Training steps of every variant.")
flags.DEFINE_integer("checkpoint_every", 0, "Score every this many steps too (0: the end only).")
flags.DEFINE_integer("num_eval", 64, "Held-out prompts scored, in each wording.")
flags.DEFINE_float("guidance", None, "Final guidance scale of the scoring samples (default: "
                   "each run's eval.guidance, the demo config's 1).")
flags.DEFINE_multi_string("set", [], "A config override for every variant, after its own: "
                          "--set=model.width=256 (repeatable).")

REPO = Path(__file__).resolve().parents[1]
# name -> config overrides on top of base_shapes.py:demo
VARIANTS = {
    "demo": [],
    "text_blocks": ["--config.model.text_depth=2"],
    "sincos": ["--config.model.pos_init=sincos"],
    "batch16": ["--config.data.batch_size=16"],
    "lr3e-3": ["--config.optim.lr=3e-3"],
    "word_dropout": ["--config.masking.text_token_dropout=0.15"],
    "sincos_text_blocks": ["--config.model.pos_init=sincos", "--config.model.text_depth=2"],
    "patch2": ["--config.model.patch_size=2"],
    "patch2_wide": ["--config.model.patch_size=2", "--config.model.width=256",
                    "--config.model.mlp_dim=1024"],
}
EVALS = {"canonical": "shapes_oracle", "held_out": "shapes_phrasings"}


def run(module: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, text=True,
                            capture_output=True)
    if result.returncode:
        raise SystemExit(f"{module} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def train(name: str, workdir: Path) -> float:
    inputs = Path(FLAGS.inputs)
    every = FLAGS.checkpoint_every or FLAGS.steps
    start = time.perf_counter()
    run("muse_jax.train", "--config=configs/base_shapes.py:demo", f"--workdir={workdir}",
        f"--config.tokenizer.workdir={inputs / 'vqgan_shapes'}",
        *(f"--config.data.{split}_{kind}={inputs / f'{prefix}_{split}'}"
          for split in ("train", "eval")
          for kind, prefix in (("text_embeddings", "minilm"), ("tokens", "tokens"))),
        f"--config.train.num_steps={FLAGS.steps}", f"--config.train.checkpoint_every={every}",
        f"--config.train.eval_every={FLAGS.steps}", *VARIANTS[name],
        *(f"--config.{override}" for override in FLAGS.set))
    return time.perf_counter() - start


def score(workdir: Path, step: int) -> dict[str, float]:
    """The oracle on the checkpoint `step` alone (copied to its own workdir, as evaluate reads
    a run's latest checkpoint)."""
    one = workdir.parent / f"{workdir.name}_step{step}"
    if not one.exists():
        (one / "checkpoints").mkdir(parents=True)
        shutil.copy(workdir / "config.json", one)
        shutil.copytree(workdir / "checkpoints" / str(step), one / "checkpoints" / str(step))
    out = {}
    guidance = [] if FLAGS.guidance is None else [f"--guidance={FLAGS.guidance}"]
    for wording, name in EVALS.items():
        text = run("muse_jax.evaluate", f"--workdir={one}", f"--eval={name}",
                   f"--num_samples={FLAGS.num_eval}", *guidance)
        result = json.loads(text[text.index("{"):])
        out |= {f"{wording}_{k}": result[k] for k in ("match", "color", "shape", "cell")}
    return out


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    rows = []
    for name in FLAGS.variants:
        workdir = Path(FLAGS.out) / name
        done = workdir / "checkpoints" / str(FLAGS.steps) / "commit_success.txt"
        seconds = None if done.exists() else train(name, workdir)
        steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
        for step in steps:
            row = {"variant": name, "step": step, "train_s": seconds, **score(workdir, step)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{FLAGS.num_eval} prompts in each wording; exact = the image shows exactly the "
          "caption's objects\n")
    print("| variant | step | train s | canonical: exact | colour | shape | cell "
          "| held-out phrasings: exact | colour | shape | cell |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        train_s = "reused" if r["train_s"] is None else f"{r['train_s']:.0f}"
        cells = " | ".join(f"{100 * r[f'{w}_{k}']:.1f}%" for w in EVALS
                           for k in ("match", "color", "shape", "cell"))
        print(f"| {r['variant']} | {r['step']} | {train_s} | {cells} |")


if __name__ == "__main__":
    app.run(main)
