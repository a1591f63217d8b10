"""Images/s the Grain pipeline delivers from converted real photos, beside the train-step rates.

    .venv/bin/python benchmarks/input_pipeline.py --photos=/tmp/photos [--batches=12]
    .venv/bin/python benchmarks/input_pipeline.py --photos=/tmp/photos --prepare_only

The photos are the 20 real ones scikit-image ships (`pip install scikit-image`; not a
dependency of muse_jax): copied as they are, with a caption each, to PHOTOS/photos, and
converted with muse_jax.data.convert to PHOTOS/array_record. They are also cut into 96 px
tiles for configs/vqgan_photos.py (PHOTOS/tiles_train, PHOTOS/tiles_eval: one tile of each
photo held out).

Pipeline: `pipeline.train_iterator` on PHOTOS/array_record (decode, resize the shorter side,
random crop, batch) at 256 px with 0, 1 and 2 grain worker processes, batch 32, and at 64 px
(the shapes configs' size) with 0 workers; the first batch (worker start-up) is not timed.
Steps: the compiled train steps of configs/vqgan_shapes.py and configs/base_shapes.py (the
latter with its frozen VQGAN and MiniLM in the step, from the tokenizer in
workdirs/vqgan_shapes, or a 1-step stand-in when that is missing) on the same cores, as
images/s consumed. A step waits on data when the pipeline's images/s at the step's size is
below the step's. Every figure is from this one run: the ratios are what carries over.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("photos", None, "Directory for the photo folder and its conversions.")
flags.DEFINE_bool("prepare_only", False, "Write the photo folder and conversions, then stop.")
flags.DEFINE_integer("batches", 12, "Timed batches per pipeline setting.")
flags.DEFINE_integer("steps", 5, "Timed train steps per config.")

# scikit-image's sample data that are photographs (not drawings or test patterns).
PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
          "clock_motion.png", "coffee.png", "coins.png", "grass.png", "gravel.png",
          "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png",
          "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg",
          "text.png")
TILE = 96


def prepare(root: Path) -> dict:
    """The photo folder, its 256 px conversion and the tile conversions; returns the reports."""
    from PIL import Image

    from muse_jax.data import convert, decode

    try:
        import skimage
    except ImportError:
        raise SystemExit("needs scikit-image for its sample photos: pip install scikit-image") from None
    data_dir = Path(skimage.__file__).parent / "data"
    photos, tiles = root / "photos", {s: root / f"tiles_{s}_folder" for s in ("train", "eval")}
    for d in (photos, *tiles.values()):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for name in PHOTOS:
        stem = Path(name).stem
        shutil.copy(data_dir / name, photos / name)
        (photos / f"{stem}.txt").write_text(f"a photo of {stem.replace('_', ' ')}\n")
        image, _, _ = decode.decode_image((data_dir / name).read_bytes())
        im = Image.fromarray(image)
        scale = 3 * TILE / min(im.size)
        im = im.resize((max(3 * TILE, round(im.width * scale)), max(3 * TILE, round(im.height * scale))),
                       Image.BICUBIC)
        cells = [(x, y) for y in range(0, im.height - TILE + 1, TILE)
                 for x in range(0, im.width - TILE + 1, TILE)]
        for i, (x, y) in enumerate(cells):
            split = "eval" if i == len(cells) - 1 else "train"
            tile = f"{stem}_{i:02d}"
            im.crop((x, y, x + TILE, y + TILE)).save(tiles[split] / f"{tile}.png")
            (tiles[split] / f"{tile}.txt").write_text(f"part of a photo of {stem.replace('_', ' ')}\n")
    reports = {"photos": convert.convert(str(photos), str(root / "array_record"), num_workers=2,
                                         overwrite=True, progress=False)}
    for split, folder in tiles.items():
        reports[f"tiles_{split}"] = convert.convert(str(folder), str(root / f"tiles_{split}"),
                                                    num_workers=0, overwrite=True, progress=False)
    return reports


def pipeline_rate(path: str, size: int, workers: int, batches: int, batch: int = 32) -> float:
    from muse_jax import config as config_lib
    from muse_jax.data import pipeline

    config = config_lib.load_file("configs/vqgan_256.py")
    config.data.update(source="array_record", path=path, image_size=size, batch_size=batch,
                       eval_size=0, num_workers=workers)
    it = pipeline.train_iterator(config, 0, 1)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - start)
    del it
    return rate


def step_rate(config, steps: int) -> float:
    """Images/s the compiled train step of `config` consumes (compilation not timed)."""
    import jax

    from muse_jax import parallel, tasks, training
    from muse_jax.data import pipeline

    task = tasks.create(config)
    mesh = parallel.create_mesh(config.mesh)
    steps = task.load(mesh)
    frozen = steps.frozen
    state, _ = parallel.create_sharded(task.init_state, mesh, jax.random.key(0))
    batch = parallel.global_batch(steps.prepare_batch(next(pipeline.train_iterator(
        config, keep_caption=task.uses_captions))), parallel.batch_sharding(mesh))
    step = jax.jit(training.skip_nonfinite(steps.train_step), donate_argnums=0)
    rng = jax.random.key(1)
    state, metrics = step(state, batch, rng, frozen)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch, rng, frozen)
    jax.block_until_ready(metrics)
    return steps * config.data.batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    import jax

    from muse_jax import config as config_lib
    from muse_jax.data import convert

    logging.set_verbosity(logging.WARNING)
    root = Path(FLAGS.photos or tempfile.mkdtemp(prefix="photos_"))
    reports = prepare(root)
    outs = {"photos": "array_record", "tiles_train": "tiles_train", "tiles_eval": "tiles_eval"}
    for name, report in reports.items():
        print(f"[{name}] " + convert.format_report(report, str(root / outs[name])).replace("\n", "\n  "))
    if FLAGS.prepare_only:
        return
    path = str(root / "array_record")
    print(f"\npipeline, {reports['photos']['written']} photos (PNG/JPEG, 102-1411 px), batch 32, "
          f"{os.cpu_count()} cores:")
    rates = {}
    for size, workers in ((256, 0), (256, 1), (256, 2), (64, 0)):
        rates[(size, workers)] = pipeline_rate(path, size, workers, FLAGS.batches)
        print(f"  {size:3d} px, {workers} workers: {rates[(size, workers)]:7.1f} images/s "
              f"({rates[(size, workers)] / rates.get((256, 0), rates[(size, workers)]):.2f}x "
              "256 px with 0 workers)")

    print(f"\ntrain steps (jax {jax.__version__}, {jax.device_count()} devices), images/s consumed:")
    vq = config_lib.load_file("configs/vqgan_shapes.py")
    tokenizer = "workdirs/vqgan_shapes"
    if not (Path(tokenizer) / "checkpoints").is_dir():
        from muse_jax import training
        tokenizer = tempfile.mkdtemp(prefix="tokenizer_")
        stand_in = config_lib.load_file("configs/vqgan_shapes.py")
        stand_in.train.num_steps = 1
        training.train_and_evaluate(stand_in, tokenizer)
    base = config_lib.load_file("configs/base_shapes.py")
    base.tokenizer.workdir = tokenizer
    for name, config in (("vqgan_shapes", vq), ("base_shapes", base)):
        rate = step_rate(config, FLAGS.steps)
        size = config.data.image_size
        feed = rates[(size, 0)] if (size, 0) in rates else float("nan")
        verdict = "the step would wait on data" if feed < rate else "the step is not data-bound"
        print(f"  {name:13s} {size} px, batch {config.data.batch_size}: {rate:7.1f} images/s; "
              f"the pipeline at {size} px with 0 workers gives {feed / rate:.1f}x that: {verdict}")


if __name__ == "__main__":
    app.run(main)
