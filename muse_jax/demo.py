"""The main job on a CPU, end to end: what `make demo` runs.

    python -m muse_jax.demo --workdir=workdirs/demo --out=demo

Installs the shapes tokenizer muse_jax ships (muse_jax/shipped_tokenizer.py; --train_tokenizer
trains it here, configs/vqgan_shapes.py:demo), encodes the captions with MiniLM and the images
with that tokenizer once (muse_jax.text.precompute, muse_jax.data.precompute_tokens), trains the
base model from them (configs/base_shapes.py:demo), then writes to --out:
  samples.png   the first 4 images the oracle scored in each wording, each prompt under its
                image;
  inpaint.png, outpaint.png, edit.png   before, before as its tokens decode, after, with the
                prompts;
  curves.png    training loss and masked-token accuracy, the oracle at the end;
  report.md, report.html   oracle accuracy on held-out prompts in the canonical wording and in
                phrasings training never used, sampling settings, each phase's time (the HTML
                page has every picture inlined).
Running it again reuses every finished phase (a stopped run resumes where it stopped).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
from absl import flags, logging

from muse_jax import demo_report, errors, sampling_flags
from muse_jax.errors import UserError
from muse_jax.images import to_model, to_uint8

FLAGS = flags.FLAGS
NUM_PROMPTS = 8  # images in samples.png
SCALE = 3  # 64 px shapes are shown at 192 px
DEMO_EDIT_KEEP = 24  # --edit_keep of the demo (see define_flags)


def define_flags() -> None:
    flags.DEFINE_string("workdir", "workdirs/demo", "Where the trained stages live.")
    flags.DEFINE_string("out", "demo", "Where the images and the report go.")
    flags.DEFINE_integer("num_eval", 64, "Held-out prompts scored by the shapes oracle.")
    flags.DEFINE_bool("train_tokenizer", False,
                      "Train the shapes tokenizer here (configs/vqgan_shapes.py:demo, 14 minutes "
                      "on 2 cores) instead of installing the one muse_jax ships, trained by the "
                      "same recipe (muse_jax/shipped_tokenizer.py).")
    sampling_flags.define(sr=False)
    # The demo's mask-free edit keeps a re-masked token its model still ranks among the 24 most
    # likely (not in Muse; sampling.EditOptions.keep has the measurement that chose 24).
    FLAGS.set_default("edit_keep", DEMO_EDIT_KEEP)
    # Its edits keep the input's own pixels where they kept its tokens (not in Muse:
    # inference.paste_unchanged), so what an edit leaves is as sharp as it was.
    FLAGS.set_default("paste_unchanged", True)


def configs(workdir: str, variant: str = "demo", train_tokenizer: bool = False):
    """The tokenizer and base configs, the base one reading the precomputed inputs.

    `variant` names the variant of both config files: "demo", or "tiny" for the tests (which
    has no shipped tokenizer). A trained tokenizer and the shipped one live in directories of
    their own, so that changing between them makes the tokens, and the base model, again."""
    from muse_jax import config as config_lib

    vq = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", variant)
    base = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", variant)
    base.tokenizer.workdir = os.path.join(
        workdir, "vqgan_shapes" if train_tokenizer else "vqgan_shapes_shipped")
    for split in ("train", "eval"):
        base.data[f"{split}_text_embeddings"] = os.path.join(workdir, f"minilm_{split}")
        base.data[f"{split}_tokens"] = os.path.join(workdir, f"tokens_{split}")
    return vq, base


@dataclasses.dataclass
class Phase:
    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's, every thread's, user and system
    reused: bool = False


class Timer:
    """Wall and CPU time of each phase of this run, for the report: their ratio says how many
    cores a phase kept busy."""

    def __init__(self):
        self.phases: list[Phase] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        entry = Phase(name)
        self.phases.append(entry)
        print(f"== {name}", flush=True)
        start, cpu_start = time.perf_counter(), time.process_time()
        yield entry
        entry.seconds = time.perf_counter() - start
        entry.cpu_seconds = time.process_time() - cpu_start
        print(f"== {name}: {entry.seconds:.0f} s, {entry.cpu_seconds:.0f} s of CPU"
              f"{' (reused)' if entry.reused else ''}", flush=True)


def trained(config, workdir: str) -> bool:
    """The run reached its last step, evaluated there (train.py writes eval.json last) and was
    trained with this config. A finished run of another config (the recipe changed since) is
    removed: resuming it would stop at once at its last step."""
    from muse_jax import runs

    path = os.path.join(workdir, "eval.json")
    if not os.path.isfile(path):
        return False
    differ = runs.differing_keys(workdir, config)
    if differ:
        print(f"{workdir} was trained with another config ({', '.join(differ[:4])}"
              f"{' ...' if len(differ) > 4 else ''} differ): training it again", flush=True)
        shutil.rmtree(workdir)
        return False
    with open(path) as f:
        return json.load(f).get("step") == config.train.num_steps


def train_stage(config, workdir: str, phase: Phase) -> None:
    from muse_jax import training

    if trained(config, workdir):
        phase.reused = True
        return
    training.train_and_evaluate(config, workdir, progress_bar=True)


def _digest(captions: dict[str, list[str]]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for split in ("train", "eval"):
        for caption in captions[split]:
            digest.update(caption.encode() + b"\n")
    return digest.hexdigest()


def _made_unless_fresh(base, kind: str, stamp_name: str, key: dict, make) -> bool:
    """Calls `make(split, out)` for the train and eval directories of `base.data`'s `{split}_
    {kind}` unless the stamp file beside them records `key` and both exist; writes the stamp
    after them. Returns whether they were fresh (reused)."""
    made = [Path(base.data[f"{split}_{kind}"]) for split in ("train", "eval")]
    stamp = made[0].parent / stamp_name
    key = json.loads(json.dumps(key))  # as JSON reads it back: tuples as lists
    if stamp.is_file() and json.loads(stamp.read_text()) == key and all(map(Path.is_dir, made)):
        return True
    stamp.unlink(missing_ok=True)
    for split, out in zip(("train", "eval"), made):
        make(split, out)
    stamp.write_text(json.dumps(key, indent=1))
    return False


def _data_key(base) -> dict:
    return {"data": {k: v for k, v in base.data.to_dict().items()
                     if not k.endswith(("_text_embeddings", "_tokens"))}, "seed": base.seed}


def encode_captions(base) -> bool:
    """MiniLM embeddings of both splits' captions, made again whenever the data or text config
    or a caption (phrasing tables live in code, not in the config) differs from what
    `captions.json` beside them records, or one of them is gone. Returns whether they were
    reused."""
    from muse_jax.data import sources
    from muse_jax.text import embeddings

    captions = {split: sources.captions(sources.create_finite(base.data, split, base.seed))
                for split in ("train", "eval")}
    key = {**_data_key(base), "text": base.text.to_dict(), "captions_sha256": _digest(captions)}
    return _made_unless_fresh(
        base, "text_embeddings", "captions.json", key,
        lambda split, out: embeddings.precompute(base.text, captions[split], out, overwrite=True))


def encode_images(base) -> bool:
    """The tokenizer's tokens of both splits' images, made again whenever the data config or the
    tokenizer's workdir differs from what `tokens.json` beside them records, or one of them is
    gone (`run` removes them when it trains a new tokenizer). Returns whether they were
    reused."""
    from muse_jax.data import tokens
    from muse_jax.tasks import vqgan as vqgan_task

    # Batches of 32, not 256: the small tokenizer's activations then stay in a CPU's cache, 449
    # against 375 images/s on 2 cores (2026-12-05).
    return _made_unless_fresh(
        base, "tokens", "tokens.json", {**_data_key(base), "tokenizer": base.tokenizer.workdir},
        lambda split, out: tokens.precompute_tokens(base, split, out, vqgan_task.load_tokenizer,
                                                    batch_size=32, overwrite=True))


def precompute(base, phase: Phase) -> None:
    """Caption embeddings and VQ tokens of both splits, each made again when stale."""
    captions_reused = encode_captions(base)
    phase.reused = encode_images(base) and captions_reused


def _lowest_priority_without_bars() -> None:
    os.nice(19)
    os.environ["TQDM_DISABLE"] = "1"  # the tokenizer's bar has the terminal


def _encode_captions_of(workdir: str, variant: str) -> bool:
    return encode_captions(configs(workdir, variant)[1])


@contextlib.contextmanager
def captions_encoded_aside(workdir: str, variant: str):
    """Encodes the captions (`encode_captions`) in a process of its own at the lowest CPU
    priority, while the caller trains (or installs) the tokenizer and encodes the images: they
    need no tokenizer, and the tokenizer's training leaves ~0.3 of 2 cores idle, in its compiles
    and between its steps.
    Yields a future; its result is what `encode_captions` returned. An error in the block
    stops the process, so that it is reported at once, not after the encoding (which writes its
    stamp last: the next run makes the captions again). Measured with `python -m
    muse_jax.demo` in new workdirs, stopped when the base model starts, alternately before this
    (0c6b73a) and with it (2 cores, 2026-12-06 22:19-22:35): the tokenizer phase 188 / 193
    against 178 / 199 s, the encoding phase 62 / 66 against 30 / 31 s, both 250 / 259 against
    208 / 230 s."""
    import concurrent.futures
    import multiprocessing

    # A process pool, not multiprocessing.Pool, whose result would never come if its process
    # died (it starts another); this one's future raises BrokenProcessPool then.
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(
        "spawn"), initializer=_lowest_priority_without_bars)
    try:
        yield pool.submit(_encode_captions_of, workdir, variant)
    except BaseException:
        # No public way to stop a pool's processes before Python 3.14 (terminate_workers).
        for process in list((pool._processes or {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------- pictures
def _font(size: int = 11):
    from PIL import ImageFont
    return ImageFont.load_default(size=size)


def captioned(image: np.ndarray, text: str, width_chars: int = 30) -> np.ndarray:
    """uint8 [H, W, 3] enlarged SCALE times with `text` wrapped beneath it."""
    from PIL import Image, ImageDraw

    big = Image.fromarray(image).resize((image.shape[1] * SCALE, image.shape[0] * SCALE),
                                        Image.NEAREST)
    lines = textwrap.wrap(text, width_chars) or [""]
    line_height = 13
    canvas = Image.new("RGB", (big.width, big.height + 6 + line_height * len(lines)), "white")
    canvas.paste(big, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((3, big.height + 3 + i * line_height), line, fill="black", font=_font())
    return np.asarray(canvas)


def tile(panels: list[np.ndarray], columns: int, gap: int = 6) -> np.ndarray:
    """Panels of equal width (heights may differ) in rows of `columns`, on white."""
    height = max(p.shape[0] for p in panels)
    width = panels[0].shape[1]
    rows = -(-len(panels) // columns)
    out = np.full((rows * (height + gap) + gap, columns * (width + gap) + gap, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        y, x = gap + (i // columns) * (height + gap), gap + (i % columns) * (width + gap)
        out[y:y + panel.shape[0], x:x + panel.shape[1]] = panel
    return out


def _save(path: Path, grid: np.ndarray) -> None:
    from muse_jax import metrics
    metrics.save_png(str(path), grid)


# ---------------------------------------------------------------------- sampling and editing
def _first(source, want, start: int = 0) -> int:
    """The first held-out index from `start` whose objects satisfy `want`."""
    index = start
    while not want(source.objects(index)):
        index += 1
    return index


def samples(held_out: list, out: Path) -> list[dict]:
    """samples.png: the first NUM_PROMPTS / 2 images the oracle scored in each wording
    (`shapes_evals.HeldOutSamples`): the grid shows phrasings training never used, its
    images are the first ones rather than chosen ones, and it costs no sampling of its own."""
    from muse_jax.data import shapes

    first = [(s.captions[i], s.scenes[i], s.images[i]) for s in held_out
             for i in range(min(NUM_PROMPTS // len(held_out), len(s.captions)))]
    _save(out / "samples.png", tile([captioned(im, p) for p, _, im in first], 4))
    return [{"prompt": p, **shapes.score(im, scene)} for p, scene, im in first]


def edits(pipe, source, options, edit_options, out: Path, paste: bool) -> dict:
    """One inpainting, one outpainting and one mask-free edit of held-out images (Muse 3.3);
    `paste`: each result with its input's own pixels wherever it kept the tokens."""
    from muse_jax.data import shapes
    from muse_jax.inference import (edit, paste_unchanged, sample_tokens, shift_canvas,
                                    shift_image, token_mask_from_pixels)

    size, grid, mask_id = pipe.config.data.image_size, pipe.grid, pipe.model.mask_id
    rng = np.random.default_rng(0)

    def other(obj: shapes.ShapeObject, cell: str | None = None) -> shapes.ShapeObject:
        return shapes.ShapeObject(rng.choice([c for c in shapes.COLORS if c != obj.color]),
                                  rng.choice([s for s in shapes.SHAPES if s != obj.shape]),
                                  cell or obj.cell)

    def start(index: int):
        image = source[index]["image"]
        return image, pipe.tokens_of(to_model(image[None]))

    def panel(name: str, before, before_tokens, before_caption: str, after_tokens,
              prompt: str, given, aligned) -> dict:
        """Before, before as its tokens decode (what the model starts from), after. The result
        keeps the pixels of `aligned` ([1,H,W,3] in [-1,1]) where it kept the tokens of `given`
        if `paste`, else it is the decoder's drawing of every token."""
        through, after = (pipe.decode(t) for t in (before_tokens, after_tokens))
        if paste:
            after = paste_unchanged(after, aligned, after_tokens, given)
        through, after = to_uint8(through)[0], to_uint8(after)[0]
        _save(out / f"{name}.png", tile([captioned(before, "before: " + before_caption),
                                         captioned(through, "before, as its tokens decode"),
                                         captioned(after, "after: " + prompt)], 3))
        return {"before": before_caption, "prompt": prompt, **shapes.score(after, prompt)}

    results = {}
    # Inpainting: the cell of the first object is masked and refilled with another object.
    i = _first(source, lambda objs: len(objs) >= 2, 9100)
    objects = source.objects(i)
    image, tokens = start(i)
    new = [other(objects[0]), *objects[1:]]
    mask = token_mask_from_pixels(shapes.cell_mask(objects[0].cell, size), grid)
    canvas = np.where(mask[None], mask_id, tokens).astype(np.int32)
    prompt = shapes.caption(new)
    results["inpaint"] = panel("inpaint", image, tokens, shapes.caption(objects),
                               sample_tokens(pipe, [prompt], options, 0, canvas=canvas), prompt,
                               given=canvas, aligned=to_model(image[None]))

    # Outpainting: the picture moves one cell (5 of 16 token columns) right; the freed left
    # column is generated, here with a new object in its middle cell.
    right_of = {"top left": "top center", "middle left": "center", "bottom left": "bottom center",
             "top center": "top right", "center": "middle right", "bottom center": "bottom right"}
    i = _first(source, lambda objs: all(o.cell in right_of for o in objs), 9200)
    objects = source.objects(i)
    image, tokens = start(i)
    moved = [shapes.ShapeObject(o.color, o.shape, right_of[o.cell]) for o in objects]
    prompt = shapes.caption([other(objects[0], "middle left"), *moved])
    canvas = shift_canvas(tokens, grid, "left", round(grid / 3), mask_id)
    moved_image = shift_image(to_model(image[None]), grid, "left", round(grid / 3))
    results["outpaint"] = panel("outpaint", image, tokens, shapes.caption(objects),
                                sample_tokens(pipe, [prompt], options, 0, canvas=canvas), prompt,
                                given=canvas, aligned=moved_image)

    # Mask-free editing: the prompt recolours one object; no mask is given.
    i = _first(source, lambda objs: len(objs) >= 2, 9300)
    objects = source.objects(i)
    image, tokens = start(i)
    recoloured = shapes.ShapeObject(other(objects[0]).color, objects[0].shape, objects[0].cell)
    prompt = shapes.caption([recoloured, *objects[1:]])
    edited = edit(pipe, tokens, [prompt], options, edit_options, seed=0)
    results["edit"] = panel("edit", image, tokens, shapes.caption(objects), edited, prompt,
                            given=tokens, aligned=to_model(image[None]))
    return results


def run(workdir: str, out: str, num_eval: int, options, edit_options=None,
        variant: str = "demo", paste: bool = True, train_tokenizer: bool = False) -> dict:
    from muse_jax import inference, sampling, shapes_evals, shipped_tokenizer

    options.check()
    edit_options = edit_options or sampling.EditOptions(keep=DEMO_EDIT_KEEP)
    if num_eval < 1:
        raise UserError(f"--num_eval must be >= 1, got {num_eval}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    vq, base = configs(workdir, variant, train_tokenizer)
    # The stamp of both kinds of inputs before captions.json and tokens.json took its place.
    Path(workdir, "inputs.json").unlink(missing_ok=True)
    timer = Timer()
    base_dir = os.path.join(workdir, "base_shapes")
    with captions_encoded_aside(workdir, variant) as captions:
        if train_tokenizer:
            with timer.phase("train the shapes tokenizer") as phase:
                train_stage(vq, base.tokenizer.workdir, phase)
        else:
            with timer.phase("install the shipped shapes tokenizer") as phase:
                phase.reused = shipped_tokenizer.install(vq, base.tokenizer.workdir)
        if not phase.reused:  # a new tokenizer: the tokens and the model trained on them are stale
            for stale in (base.data.train_tokens, base.data.eval_tokens, base_dir):
                shutil.rmtree(stale, ignore_errors=True)
        with timer.phase("encode captions (MiniLM) and images (tokenizer) once") as phase:
            captions_reused = captions.result()
            phase.reused = encode_images(base) and captions_reused
    if not phase.reused:  # new inputs: a base run trained on other ones is stale
        shutil.rmtree(base_dir, ignore_errors=True)
    with timer.phase("train the base model") as phase:
        train_stage(base, base_dir, phase)
    with timer.phase("sample held-out prompts and score them") as phase:
        pipe = inference.load(base_dir)
        held_out = [shapes_evals.sample_held_out(pipe, options, num_eval, 0, batch_size=64,
                                                 phrasing=phrasing)
                    for phrasing in ("canonical", "held_out")]
        oracles = {s.phrasing: {"num_samples": num_eval, **s.scores()} for s in held_out}
        grid = samples(held_out, out_dir)
    with timer.phase("inpaint, outpaint, edit"):
        edited = edits(pipe, shapes_evals.eval_source(pipe, "the demo"), options, edit_options,
                       out_dir, paste)
    curves = {demo_report.WORDINGS[p]: ([base.train.num_steps], [o["match"]])
              for p, o in oracles.items()}
    demo_report.write(out_dir, timer, options, edit_options, oracles, curves, grid, edited, vq,
                      base, workdir, Path(base_dir) / "metrics.jsonl", paste,
                      tokenizer_shipped=not train_tokenizer)
    print(f"oracle accuracy {oracles['canonical']['match']:.1%} on {num_eval} held-out prompts, "
          f"{oracles['held_out']['match']:.1%} in held-out phrasings; "
          f"report: {out_dir / 'report.html'}")
    return {"oracle": oracles["canonical"], "oracles": oracles, "phases": timer.phases}


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    own = sampling_flags.eval_defaults(configs(FLAGS.workdir)[1].eval)  # base_shapes.py's
    run(FLAGS.workdir, FLAGS.out, FLAGS.num_eval, sampling_flags.options(**own),
        sampling_flags.edit_options(), paste=FLAGS.paste_unchanged,
        train_tokenizer=FLAGS.train_tokenizer)


if __name__ == "__main__":
    define_flags()
    errors.run(main)
