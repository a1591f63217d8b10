"""Generates or edits images with a trained base model, optionally super-resolved.

  python -m muse_jax.sample --workdir=workdirs/base_shapes --prompt="a red circle at the center" \
      --num_images=4 --out=grid.png
  ... --prompts_file=prompts.txt --negative_prompt="a blue square" --steps=12 --guidance=3
  ... --image=in.png --mask=mask.png --prompt=...      # inpaint where the mask is white
  ... --image=in.png --outpaint=left:4 --prompt=...    # shift 4 token columns right, fill the left
  ... --image=in.png --edit --prompt=...               # mask-free editing (Muse's settings)
  ... --image=in.png --edit --paste_unchanged ...      # the input's own pixels where kept
  ... --sr_workdir=workdirs/sr_shapes --sr_steps=8       # then super-resolution (Muse 2.4)

Writes the PNG grid (one row a prompt, --num_images columns) and, beside it, a JSON file of the
settings used. --out is checked (a writable .png path) before anything loads; the images are
sampled, decoded and written batch by batch (muse_jax/grid_png.py), so memory holds one batch
however many prompts a --prompts_file lists (the file is read as it is sampled). The same flags and seed give the same images. With --sr_workdir the base tokens
go through the super-resolution model and its tokenizer's decoder in the same compiled call, so
the grid is at the SR run's resolution, and --image is given at that resolution: inpainting and
outpainting then work as Muse's text-guided inpainting does, on the input decimated to the base
resolution and on the input itself, keeping everything outside the region at both. Edited
tokens (--edit) are super-resolved afterwards.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile

import numpy as np
from absl import flags, logging

from muse_jax import errors, sampling_flags
from muse_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Workdir of a trained base-stage run.")
    flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable).")
    flags.DEFINE_string("prompts_file", None, "UTF-8 file, one prompt a line.")
    flags.DEFINE_string("negative_prompt", "", "Replaces the empty caption in guidance.")
    flags.DEFINE_integer("num_images", 4, "Images per prompt.")
    flags.DEFINE_integer("batch_size", 16, "Images per compiled call.")
    flags.DEFINE_string("image", None, "Input image for --mask, --outpaint or --edit.")
    flags.DEFINE_string("mask", None, "Inpainting mask image: white = regenerate.")
    flags.DEFINE_string("outpaint", None, "DIRECTION:TOKENS, e.g. left:4 (left|right|up|down), "
                        "in base-model tokens.")
    flags.DEFINE_bool("edit", False, "Mask-free editing of --image towards the prompt.")
    flags.DEFINE_string("out", "samples.png", "Output PNG grid.")
    sampling_flags.define()


def _file_prompts():
    """The non-empty lines of --prompts_file, read lazily (a file of millions stays on disk)."""
    if not FLAGS.prompts_file:
        return
    with open(FLAGS.prompts_file, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line.strip()


def _count_prompts() -> int:
    """How many prompts the flags give, checking --prompts_file once through (UTF-8, not
    empty) before anything is loaded; the prompts themselves are read again as sampled."""
    count = len(FLAGS.prompt)
    if FLAGS.prompts_file:
        if not os.path.isfile(FLAGS.prompts_file):
            raise UserError(f"--prompts_file {FLAGS.prompts_file} not found")
        in_file = 0
        with open(FLAGS.prompts_file, "rb") as f:  # line by line: the line at fault is named
            for line, raw in enumerate(f, start=1):
                try:
                    in_file += bool(raw.decode("utf-8").strip())
                except UnicodeDecodeError as e:
                    raise UserError(f"--prompts_file {FLAGS.prompts_file} is not UTF-8 text "
                                    f"(line {line}, byte {e.start + 1}: {e.reason})") from None
        if not in_file:
            raise UserError(f"--prompts_file {FLAGS.prompts_file} holds no prompts")
        count += in_file
    if not count:
        raise UserError("give at least one --prompt or a --prompts_file")
    return count


def _rows():
    """Each prompt --num_images times, in grid order (a row of the grid a prompt)."""
    for prompt in itertools.chain(FLAGS.prompt, _file_prompts()):
        yield from itertools.repeat(prompt, FLAGS.num_images)


def _check_out(out: str) -> str:
    """Fails now, not after sampling, for an --out that cannot be written; returns the path of
    the settings file beside it."""
    root, ext = os.path.splitext(out)
    if ext.lower() != ".png":
        raise UserError(f"--out must name a .png file (the grid is written as PNG), got {out!r}")
    settings = root + ".json"
    if "://" in out:
        return settings
    for path in (out, settings):
        if os.path.isdir(path):
            raise UserError(f"--out {out}: {path} is a directory")
    parent = os.path.dirname(os.path.abspath(out))
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"--out {out} cannot be written: {existing} is a file, not a directory")
    try:
        os.makedirs(parent, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write_test_"):
            pass
    except OSError as e:
        raise UserError(f"--out {out} cannot be written: {e.strerror or e} "
                        f"({e.filename or parent})") from None
    return settings


def _editing() -> str | None:
    """Which of --mask, --outpaint, --edit is asked for (at most one, and with --image)."""
    editing = [name for name in ("mask", "outpaint") if FLAGS[name].value]
    editing += ["edit"] if FLAGS.edit else []
    if len(editing) > 1:
        raise UserError(f"choose one of --mask, --outpaint, --edit (got {', '.join(editing)})")
    if editing and not FLAGS.image:
        raise UserError(f"--{editing[0]} needs --image")
    if FLAGS.image and not editing:
        raise UserError("--image needs one of --mask, --outpaint, --edit")
    return editing[0] if editing else None


def _outpaint() -> tuple[str, int]:
    direction, _, amount = FLAGS.outpaint.partition(":")
    try:
        return direction, int(amount)
    except ValueError:
        raise UserError(f"--outpaint must be DIRECTION:TOKENS, e.g. left:4, got "
                        f"{FLAGS.outpaint!r}") from None


def starting_point(pipe, sr_pipe, mode: str | None) -> dict:
    """What every batch starts from, computed once from --image (and --mask or --outpaint):
    one row of each canvas, or the tokens of the image to edit."""
    from muse_jax import inference
    from muse_jax.images import load_image, load_mask

    if mode is None:
        return {}
    size = (sr_pipe or pipe).size
    image = load_image(FLAGS.image, size)[None]
    if mode == "edit":
        low = image if sr_pipe is None else inference.decimate(image, pipe.size)
        return {"tokens": pipe.tokens_of(low), "image": image}
    if sr_pipe is None:
        tokens = pipe.tokens_of(image)
        if mode == "mask":
            hole = inference.token_mask_from_pixels(load_mask(FLAGS.mask, size), pipe.grid)
            return {"canvas": np.where(hole[None], pipe.mask_id, tokens), "image": image}
        canvas = inference.shift_canvas(tokens, pipe.grid, *_outpaint(), pipe.mask_id)
        return {"canvas": canvas, "image": inference.shift_image(image, pipe.grid, *_outpaint())}
    if mode == "mask":
        canvas, sr_canvas = inference.inpaint_canvases(pipe, sr_pipe, image,
                                                       load_mask(FLAGS.mask, size)[None])
        return {"canvas": canvas, "sr_canvas": sr_canvas, "image": image}
    canvas, sr_canvas = inference.outpaint_canvases(pipe, sr_pipe, image, *_outpaint())
    return {"canvas": canvas, "sr_canvas": sr_canvas,
            "image": inference.shift_image(image, pipe.grid, *_outpaint())}


def generate(pipe, sr_pipe, rows: list[str], first_row: int, mode: str | None, start: dict,
             options, sr_options, edit_options) -> np.ndarray:
    """The images [len(rows), H, W, 3] in [-1, 1] of rows `first_row`.. of the job: one
    compiled call (rows is at most --batch_size long)."""
    from muse_jax import inference

    negative, seed, n = FLAGS.negative_prompt, FLAGS.seed, len(rows)
    common = dict(batch_size=n, first_row=first_row)
    each = {k: np.repeat(v, n, axis=0) for k, v in start.items()}
    if mode == "edit":
        tokens = inference.edit(pipe, each["tokens"], rows, options, edit_options, seed,
                                negative, **common)
        images = pipe.decode(tokens) if sr_pipe is None else sr_pipe.decode(
            inference.super_resolve(sr_pipe, tokens, rows, sr_options, seed, negative, **common))
    elif sr_pipe is None:
        tokens = inference.sample_tokens(pipe, rows, options, seed, negative,
                                         each.get("canvas"), **common)
        images = pipe.decode(tokens)
    else:
        out = inference.sample_two_stage(pipe, sr_pipe, rows, options, sr_options, seed, negative,
                                         each.get("canvas"), each.get("sr_canvas"), **common)
        tokens, images = out["low_res"], out["images"]
    if FLAGS.paste_unchanged:
        given = each["tokens"] if mode == "edit" else each["canvas"]
        images = inference.paste_unchanged(images, each["image"], tokens, given)
    return images


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    from muse_jax import inference

    sr_options = sampling_flags.sr_options()  # checks the decoding flags (options()) too
    edit_options = sampling_flags.edit_options()
    if FLAGS.num_images < 1:
        raise UserError(f"--num_images must be >= 1, got {FLAGS.num_images}")
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    settings_file = _check_out(FLAGS.out)
    num_prompts = _count_prompts()
    mode = _editing()
    if FLAGS.paste_unchanged and not mode:
        raise UserError("--paste_unchanged needs --edit, --mask or --outpaint")
    if mode == "outpaint":
        _outpaint()
    options = sampling_flags.options(**sampling_flags.run_defaults(FLAGS.workdir))
    pipe = inference.load(FLAGS.workdir, lora_scale=FLAGS.lora_scale)
    sr_pipe = inference.load_sr(FLAGS.sr_workdir, pipe) if FLAGS.sr_workdir else None
    size = (sr_pipe or pipe).size
    start = starting_point(pipe, sr_pipe, mode)

    inference.sample_to_grid(
        FLAGS.out, _rows(), num_prompts, FLAGS.num_images, size,
        lambda part, first_row: generate(pipe, sr_pipe, part, first_row, mode, start, options,
                                         sr_options, edit_options),
        FLAGS.batch_size, desc="editing" if mode == "edit" else "sampling")
    settings = {"workdir": FLAGS.workdir, "prompts": list(FLAGS.prompt),
                "prompts_file": FLAGS.prompts_file, "num_prompts": num_prompts,
                "negative_prompt": FLAGS.negative_prompt,
                "num_images": FLAGS.num_images, "seed": FLAGS.seed, **dataclasses.asdict(options),
                "image": FLAGS.image, "mask": FLAGS.mask, "outpaint": FLAGS.outpaint,
                "edit": FLAGS.edit, "paste_unchanged": FLAGS.paste_unchanged,
                "sr_workdir": FLAGS.sr_workdir}
    if FLAGS.edit:
        settings["edit_options"] = dataclasses.asdict(edit_options)
    if sr_pipe is not None:
        settings.update(sr_steps=FLAGS.sr_steps, sr_guidance=FLAGS.sr_guidance)
    with open(settings_file, "w") as f:
        json.dump(settings, f, indent=2)
    logging.info("wrote %s", FLAGS.out)
    print(FLAGS.out)


if __name__ == "__main__":
    define_flags()
    errors.run(main)
