"""Does a shapes tokenizer give the same object the same codes? And how well does it redraw?

    make demo    # a demo workdir: vqgan_shapes/ and tokens_train/ (jitter-free scenes)
    .venv/bin/python benchmarks/tokenizer_locality.py --workdirs=workdirs/demo,/tmp/other_demo

For each demo workdir: over the first `--scenes` training scenes (objects at their canonical
size and place, so an object of a colour and shape in a cell is the same pixels in every
scene), the share of the tokens of an object's cell that equal that object's most common
codes there, and the median count of distinct code patterns an object gets; then the
tokenizer's reconstructions of 256 held-out scenes: the share the shapes oracle reads exactly
right, and their PSNR. `model.norm` (models/vqgan.py) quotes its figures.
"""
from __future__ import annotations

import collections
import json

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", ["workdirs/demo"], "Demo workdirs (vqgan_shapes/, tokens_train/).")
flags.DEFINE_integer("scenes", 4000, "Training scenes whose tokens are compared.")


def code_agreement(tokens_dir: str, scenes: int) -> dict:
    from muse_jax.data import shapes
    from muse_jax.data.shards import TokenRecords

    records = TokenRecords(tokens_dir)
    source = shapes.ShapesSource(split="train", seed=0, jitter=False)
    grid = records.grid_size
    bounds = np.round(np.arange(4) * grid / 3).astype(int)
    cells = collections.defaultdict(list)
    for i in range(min(scenes, len(records))):
        tokens = records[i]["tokens"]
        for obj in source.objects(i):
            row, col = divmod(shapes.CELLS.index(obj.cell), 3)
            rows, cols = slice(*bounds[row:row + 2]), slice(*bounds[col:col + 2])
            cells[obj].append(tokens[rows, cols].ravel())
    agree, patterns = [], []
    for drawings in cells.values():
        drawings = np.stack(drawings).astype(np.int64)
        mode = np.array([np.bincount(column).argmax() for column in drawings.T])
        agree.append(float((drawings == mode).mean()))
        patterns.append(len({tuple(d) for d in drawings}))
    return {"objects": len(cells), "code_agreement": float(np.mean(agree)),
            "median_patterns": float(np.median(patterns)),
            "drawings_per_object": float(np.mean([len(d) for d in cells.values()]))}


def reconstructions(vq_dir: str, count: int = 256) -> dict:
    import jax

    from muse_jax.data import shapes
    from muse_jax.images import to_model, to_uint8
    from muse_jax.tasks import vqgan

    model, params, _ = vqgan.load_tokenizer(vq_dir)
    source = shapes.ShapesSource(split="eval", seed=0, jitter=False)
    images = np.stack([source[i]["image"] for i in range(count)])
    roundtrip = jax.jit(lambda p, x: model.apply(
        {"params": p}, model.apply({"params": p}, x, method=model.encode), method=model.decode))
    out = to_uint8(np.asarray(roundtrip(params, to_model(images))))
    right = [shapes.score(o, shapes.caption(source.objects(i)))["match"] for i, o in enumerate(out)]
    mse = float(np.mean((out.astype(np.float64) - images) ** 2))
    return {"recon_oracle": float(np.mean(right)), "psnr_db": 10 * np.log10(255 ** 2 / mse)}


def main(argv):
    del argv
    for workdir in FLAGS.workdirs:
        row = {"workdir": workdir, **code_agreement(f"{workdir}/tokens_train", FLAGS.scenes),
               **reconstructions(f"{workdir}/vqgan_shapes")}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    app.run(main)
