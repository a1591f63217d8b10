"""Teaching a trained base model a concept it never saw: LoRA against full fine-tuning, on shapes.

    .venv/bin/python benchmarks/new_concept.py --workdir=/tmp/new_concept
    .venv/bin/python benchmarks/new_concept.py --workdir=/tmp/new_concept \\
        --tokenizer=workdirs/demo/vqgan_shapes_shipped --base_steps=1000 --images=24

1. The base model (configs/base_shapes.py:demo's recipe, canonical captions) is trained on a
   shapes world without the colour orange and without triangles (`data.shapes_exclude_*`):
   it never sees an image or caption of either.
2. `--images` training scenes in which every object is orange or a triangle (1 or 2 objects),
   plus 4 held out, are written as an image folder with captions: the few-image data path a
   user has (configs/finetune_shapes.py, `data.source = "image_folder"`).
3. The base run is fine-tuned on them twice from the same start, with LoRA and in full
   (configs/finetune_shapes.py and its `:full` variant, their steps and rates).
4. The shapes oracle scores the base run and both fine-tunes on held-out scenes of two kinds,
   sampled with the same seed and settings (24 steps, guidance rising to 4): "new" (every
   object orange or a triangle) and "old" (no orange, no triangle: forgetting shows here).

Prints one JSON line a run and a Markdown table; finished phases are reused on a rerun.
The tokenizer is trained on the whole world (as a pretrained tokenizer would be); pass
`--tokenizer` to reuse one, e.g. the demo's.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/new_concept", "Where the runs and the images go.")
flags.DEFINE_string("tokenizer", "", "A trained shapes tokenizer run (default: train one).")
flags.DEFINE_integer("base_steps", 1000, "Steps of the base run.")
flags.DEFINE_integer("images", 24, "Fine-tuning images (4 more are held out).")
flags.DEFINE_integer("finetune_steps", 0, "Steps of each fine-tune (0: the config's).")
flags.DEFINE_integer("num_eval", 64, "Held-out scenes of each kind scored.")

NEW_COLOR, NEW_SHAPE = "orange", "triangle"
HELD_OUT_IMAGES = 4  # finetune_shapes.py's data.eval_size


def is_new(obj) -> bool:
    return obj.color == NEW_COLOR or obj.shape == NEW_SHAPE


def scenes(split: str, kind: str, count: int, max_objects: int, seed: int = 0) -> list[list]:
    """The first `count` scenes of the shapes stream `split` of one kind: "new" (every object
    orange or a triangle) or "old" (none is)."""
    from muse_jax.data import shapes

    source = shapes.ShapesSource(split=split, seed=seed, max_objects=max_objects)
    keep = (lambda objs: all(map(is_new, objs))) if kind == "new" else (
        lambda objs: not any(map(is_new, objs)))
    out, i = [], 0
    while len(out) < count:
        objects = source.objects(i)
        i += 1
        if keep(objects):
            out.append(objects)
    return out


def write_images(folder: Path, count: int) -> None:
    """`count` + HELD_OUT_IMAGES new-concept training scenes as PNGs with .txt captions."""
    from PIL import Image

    from muse_jax.data import shapes

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, objects in enumerate(scenes("train", "new", count + HELD_OUT_IMAGES, 2)):
        Image.fromarray(shapes.render(objects, 64, rng)).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(shapes.caption(objects) + "\n")


def score(workdir: str, kinds: dict[str, list[list]]) -> dict[str, float]:
    from muse_jax import inference, sampling
    from muse_jax.data import shapes
    from muse_jax.images import to_uint8

    pipe = inference.load(workdir)
    options = sampling.SamplingOptions()
    out = {}
    for kind, objects in kinds.items():
        captions = [shapes.caption(o) for o in objects]
        tokens = inference.sample_tokens(pipe, captions, options, seed=0, batch_size=64)
        result = shapes.score_batch(to_uint8(pipe.decode(tokens)), objects)
        out.update({f"{kind}_{k}": v for k, v in result.items()})
    return out


def train(config, workdir: str) -> float:
    """Trains unless the run already finished; the wall time of the training (0 if reused)."""
    from muse_jax import demo, training

    if demo.trained(config, workdir):  # the demo's reuse rule
        return 0.0
    start = time.perf_counter()
    training.train_and_evaluate(config, workdir, progress_bar=True)
    return time.perf_counter() - start


def main(argv):
    del argv
    from muse_jax import config as config_lib
    from muse_jax import demo

    logging.set_verbosity(logging.WARNING)
    root = Path(FLAGS.workdir)
    vq, base = demo.configs(str(root), "demo", train_tokenizer=True)
    if FLAGS.tokenizer:
        base.tokenizer.workdir = FLAGS.tokenizer
    else:
        train(vq, base.tokenizer.workdir)
    base.data.shapes_phrasing = "canonical"
    base.data.shapes_exclude_colors = (NEW_COLOR,)
    base.data.shapes_exclude_shapes = (NEW_SHAPE,)
    base.train.num_steps = base.train.eval_every = FLAGS.base_steps
    base.train.checkpoint_every = max(FLAGS.base_steps // 4, 1)
    for split in ("train", "eval"):  # not the demo's inputs: these exclude the new concepts
        base.data[f"{split}_text_embeddings"] = str(root / f"minilm_{split}")
        base.data[f"{split}_tokens"] = str(root / f"tokens_{split}")
    demo.precompute(base, demo.Phase("precompute"))
    base_dir = str(root / "base")
    rows = {"base": {"seconds": train(base, base_dir), "steps": FLAGS.base_steps}}

    folder = root / "images"
    if not folder.is_dir():
        write_images(folder, FLAGS.images)
    for name, variant in (("lora", None), ("full", "full")):
        config = config_lib.load_file(config_lib.CONFIG_DIR / "finetune_shapes.py", variant)
        config.finetune.init_from = base_dir
        config.tokenizer.workdir = base.tokenizer.workdir
        config.data.path = str(folder)
        if FLAGS.finetune_steps:
            config.train.num_steps = FLAGS.finetune_steps
        config.train.eval_every = config.train.num_steps
        rows[name] = {"seconds": train(config, str(root / name)), "steps": config.train.num_steps,
                      "images": FLAGS.images}

    kinds = {kind: scenes("eval", kind, FLAGS.num_eval, base.data.shapes_max_objects)
             for kind in ("new", "old")}
    for name in rows:
        rows[name].update(score(str(root / name), kinds))
        print(json.dumps({"run": name, **rows[name]}), flush=True)
    print("\n| run | steps | train s | new: exact | colour | shape | old: exact | colour | shape |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['steps']} | {r['seconds']:.0f} | {r['new_match']:.1%} | "
              f"{r['new_color']:.1%} | {r['new_shape']:.1%} | {r['old_match']:.1%} | "
              f"{r['old_color']:.1%} | {r['old_shape']:.1%} |")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
