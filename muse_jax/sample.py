"""Generates or edits images with a trained base model, optionally super-resolved.

  python -m muse_jax.sample --workdir=workdirs/base_shapes --prompt="a red circle at the center" \
      --num_images=4 --out=grid.png
  ... --prompts_file=prompts.txt --negative_prompt="a blue square" --steps=12 --guidance=3
  ... --image=in.png --mask=mask.png --prompt=...      # inpaint where the mask is white
  ... --image=in.png --outpaint=left:4 --prompt=...    # shift 4 token columns right, fill the left
  ... --image=in.png --edit --prompt=...               # mask-free editing (Muse's settings)
  ... --sr_workdir=workdirs/sr_shapes --sr_steps=8       # then super-resolution (Muse 2.4)

Writes the PNG grid (one row a prompt, --num_images columns) and, beside it, a JSON file of the
settings used. The same flags and seed give the same images. With --sr_workdir the base tokens
go through the super-resolution model and its tokenizer's decoder in the same compiled call, so
the grid is at the SR run's resolution, and --image is given at that resolution: inpainting and
outpainting then work as Muse's text-guided inpainting does, on the input decimated to the base
resolution and on the input itself, keeping everything outside the region at both. Edited
tokens (--edit) are super-resolved afterwards.
"""
from __future__ import annotations

import dataclasses
import json
import os

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


def _read_prompts() -> list[str]:
    prompts = list(FLAGS.prompt)
    if FLAGS.prompts_file:
        if not os.path.isfile(FLAGS.prompts_file):
            raise UserError(f"--prompts_file {FLAGS.prompts_file} not found")
        with open(FLAGS.prompts_file, encoding="utf-8") as f:
            from_file = [line.strip() for line in f if line.strip()]
        if not from_file:
            raise UserError(f"--prompts_file {FLAGS.prompts_file} holds no prompts")
        prompts += from_file
    if not prompts:
        raise UserError("give at least one --prompt or a --prompts_file")
    return prompts


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


def generate(pipe, sr_pipe, rows: list[str], mode: str | None, options, sr_options,
             edit_options) -> np.ndarray:
    """The images [len(rows), H, W, 3] in [-1, 1] that the flags ask for."""
    from muse_jax import inference
    from muse_jax.images import load_image, load_mask

    negative, seed, batch = FLAGS.negative_prompt, FLAGS.seed, FLAGS.batch_size
    size = (sr_pipe or pipe).size
    image = load_image(FLAGS.image, size)[None] if FLAGS.image else None
    if mode == "edit":
        low = image if sr_pipe is None else inference.decimate(image, pipe.size)
        tokens = np.repeat(pipe.tokens_of(low), len(rows), axis=0)
        result = inference.edit(pipe, tokens, rows, options, edit_options, seed, negative,
                                batch, progress=True)
        if sr_pipe is None:
            return pipe.decode(result)
        return sr_pipe.decode(inference.super_resolve(sr_pipe, result, rows, sr_options, seed,
                                                      negative, batch))
    if sr_pipe is None:
        canvas = None
        if mode:
            tokens = np.repeat(pipe.tokens_of(image), len(rows), axis=0)
            if mode == "mask":
                hole = inference.token_mask_from_pixels(load_mask(FLAGS.mask, size), pipe.grid)
                canvas = np.where(hole[None], pipe.mask_id, tokens)
            else:
                canvas = inference.shift_canvas(tokens, pipe.grid, *_outpaint(), pipe.mask_id)
        return pipe.decode(inference.sample_tokens(pipe, rows, options, seed, negative, canvas,
                                                   batch, progress=True))
    canvas = sr_canvas = None
    if mode == "mask":
        masks = load_mask(FLAGS.mask, size)[None]
        canvas, sr_canvas = inference.inpaint_canvases(pipe, sr_pipe, image, masks)
    elif mode == "outpaint":
        canvas, sr_canvas = inference.outpaint_canvases(pipe, sr_pipe, image, *_outpaint())
    if canvas is not None:
        canvas, sr_canvas = (np.repeat(c, len(rows), axis=0) for c in (canvas, sr_canvas))
    return inference.sample_two_stage(pipe, sr_pipe, rows, options, sr_options, seed, negative,
                                      canvas, sr_canvas, batch, progress=True)["images"]


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    from muse_jax import inference, metrics

    options = sampling_flags.options()
    sr_options = sampling_flags.sr_options()
    edit_options = sampling_flags.edit_options()
    if FLAGS.num_images < 1:
        raise UserError(f"--num_images must be >= 1, got {FLAGS.num_images}")
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    prompts = _read_prompts()
    mode = _editing()
    pipe = inference.load(FLAGS.workdir, lora_scale=FLAGS.lora_scale)
    sr_pipe = inference.load_sr(FLAGS.sr_workdir, pipe) if FLAGS.sr_workdir else None
    rows = [p for p in prompts for _ in range(FLAGS.num_images)]
    images = generate(pipe, sr_pipe, rows, mode, options, sr_options, edit_options)
    grid = metrics.image_grid(*images.reshape(len(prompts), FLAGS.num_images, *images.shape[1:]),
                              columns=FLAGS.num_images)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    metrics.save_png(FLAGS.out, grid)
    settings = {"workdir": FLAGS.workdir, "prompts": prompts, "negative_prompt": FLAGS.negative_prompt,
                "num_images": FLAGS.num_images, "seed": FLAGS.seed, **dataclasses.asdict(options),
                "image": FLAGS.image, "mask": FLAGS.mask, "outpaint": FLAGS.outpaint,
                "edit": FLAGS.edit, "sr_workdir": FLAGS.sr_workdir}
    if FLAGS.edit:
        settings["edit_options"] = dataclasses.asdict(edit_options)
    if sr_pipe is not None:
        settings.update(sr_steps=FLAGS.sr_steps, sr_guidance=FLAGS.sr_guidance)
    with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
        json.dump(settings, f, indent=2)
    logging.info("wrote %s", FLAGS.out)
    print(FLAGS.out)


if __name__ == "__main__":
    define_flags()
    errors.run(main)
