"""Generates or edits images with a trained base model.

  python -m muse_jax.sample --workdir=workdirs/base_shapes --prompt="a red circle at the center" \
      --num_images=4 --out=grid.png
  ... --prompts_file=prompts.txt --negative_prompt="a blue square" --steps=12 --guidance=3
  ... --image=in.png --mask=mask.png --prompt=...      # inpaint where the mask is white
  ... --image=in.png --outpaint=left:4 --prompt=...    # shift 4 token columns right, fill the left
  ... --image=in.png --edit=8 --prompt=...             # mask-free editing, 8 iterations

Writes the PNG grid (one row a prompt, --num_images columns) and, beside it, a JSON file of the
settings used. The same flags and seed give the same images.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from absl import flags, logging

from muse_jax import errors
from muse_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Workdir of a trained base-stage run.")
    flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable).")
    flags.DEFINE_string("prompts_file", None, "UTF-8 file, one prompt a line.")
    flags.DEFINE_string("negative_prompt", "", "Replaces the empty caption in guidance.")
    flags.DEFINE_integer("steps", 24, "Decoding steps (Muse: 24 for the base model).")
    flags.DEFINE_float("guidance", 4.0, "Final classifier-free guidance scale (0: off).")
    flags.DEFINE_enum("guidance_schedule", "linear", ["linear", "cosine", "constant"],
                      "How the guidance scale rises over the steps.")
    flags.DEFINE_float("temperature", 1.0, "Token sampling temperature.")
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_integer("num_images", 4, "Images per prompt.")
    flags.DEFINE_integer("batch_size", 16, "Images per compiled call.")
    flags.DEFINE_string("image", None, "Input image for --mask, --outpaint or --edit.")
    flags.DEFINE_string("mask", None, "Inpainting mask image: white = regenerate.")
    flags.DEFINE_string("outpaint", None, "DIRECTION:TOKENS, e.g. left:4 (left|right|up|down).")
    flags.DEFINE_integer("edit", 0, "Mask-free editing iterations (0: off).")
    flags.DEFINE_float("edit_mask_rate", 0.5, "Share of tokens re-masked each edit iteration.")
    flags.DEFINE_string("out", "samples.png", "Output PNG grid.")


@dataclasses.dataclass
class Pipeline:
    """A trained base model with its frozen tokenizer and text encoder, ready to sample."""
    config: object
    model: object
    params: object  # the EMA weights
    tokenizer: object
    tokenizer_params: object
    text_encoder: object
    grid: int

    @property
    def factor(self) -> int:
        return self.tokenizer.downsample_factor

    def encode_text(self, prompts: list[str]):
        return self.text_encoder.encode(prompts)

    def tokens_of(self, images: np.ndarray) -> np.ndarray:
        """Images [B,H,W,3] in [-1,1] -> token ids [B, h*w]."""
        import jax
        ids = jax.jit(lambda p, x: self.tokenizer.apply({"params": p}, x,
                                                        method=self.tokenizer.encode))(
            self.tokenizer_params, images)
        return np.asarray(ids).reshape(len(images), -1)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        import jax
        ids = np.asarray(tokens).reshape(len(tokens), self.grid, self.grid)
        return np.asarray(jax.jit(lambda p, t: self.tokenizer.apply(
            {"params": p}, t, method=self.tokenizer.decode))(self.tokenizer_params, ids))


def load_pipeline(workdir: str) -> Pipeline:
    """Reads a base run's config.json and latest checkpoint (EMA weights), then its frozen parts."""
    import ml_collections

    from muse_jax import checkpoint
    from muse_jax.tasks import base as base_task
    from muse_jax.tasks import vqgan as vqgan_task
    from muse_jax.text import create_encoder

    config_file = os.path.join(workdir or "", "config.json")
    if not workdir or not os.path.isfile(config_file):
        raise UserError(f"--workdir {workdir!r} has no config.json: train a base model first "
                        f"(python -m muse_jax.train --config=configs/base_shapes.py --workdir=DIR)")
    with open(config_file) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.stage != "base":
        raise UserError(f"{workdir} is a {config.stage!r} run; sampling needs a base-stage run")
    try:
        state = checkpoint.load_state(os.path.join(workdir, "checkpoints"))
    except FileNotFoundError:
        raise UserError(f"no checkpoint found under {workdir}/checkpoints") from None
    tokenizer, tokenizer_params, _ = vqgan_task.load_tokenizer(config.tokenizer.workdir)
    return Pipeline(config=config, model=base_task.build_model(config), params=state["ema_params"],
                    tokenizer=tokenizer, tokenizer_params=tokenizer_params,
                    text_encoder=create_encoder(config.text), grid=config.model.grid_size)


def sample_tokens(pipe: Pipeline, prompts: list[str], options, seed: int, negative: str = "",
                  canvas: np.ndarray | None = None, batch_size: int = 16,
                  progress: bool = False) -> np.ndarray:
    """Token ids [len(prompts), N] for each prompt (and canvas row), batch by batch."""
    import jax
    from tqdm import tqdm

    from muse_jax import sampling

    generate = sampling.make_generate(pipe.model, options)
    n = pipe.grid * pipe.grid
    if canvas is None:
        canvas = np.full((len(prompts), n), pipe.model.mask_id, np.int32)
    uncond_emb, uncond_mask = pipe.encode_text([negative])
    out = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
        chunk = prompts[start:start + batch_size]
        emb, mask = pipe.encode_text(chunk)
        rng = jax.random.fold_in(jax.random.key(seed), start)
        out.append(np.asarray(generate(pipe.params, emb, mask, uncond_emb, uncond_mask, rng,
                                       canvas[start:start + batch_size])))
    return np.concatenate(out)


def token_mask_from_pixels(pixel_mask: np.ndarray, grid: int) -> np.ndarray:
    """A token is regenerated if any pixel of its patch is masked. [H,W] bool -> [grid*grid]."""
    h, w = pixel_mask.shape
    if h % grid or w % grid:
        raise UserError(f"mask of {w}x{h} pixels does not divide into the {grid}x{grid} token grid")
    patches = pixel_mask.reshape(grid, h // grid, grid, w // grid)
    return patches.any(axis=(1, 3)).reshape(-1)


def shift_canvas(tokens: np.ndarray, grid: int, direction: str, amount: int, mask_id: int):
    """Outpainting: the image's tokens moved away from `direction` by `amount`; the gap masked."""
    if direction not in ("left", "right", "up", "down") or not 0 < amount < grid:
        raise UserError(f"--outpaint must be left|right|up|down:N with 0 < N < {grid}, "
                        f"got {direction}:{amount}")
    ids = tokens.reshape(-1, grid, grid)
    out = np.full_like(ids, mask_id)
    if direction == "left":
        out[:, :, amount:] = ids[:, :, :-amount]
    elif direction == "right":
        out[:, :, :-amount] = ids[:, :, amount:]
    elif direction == "up":
        out[:, amount:] = ids[:, :-amount]
    else:
        out[:, :-amount] = ids[:, amount:]
    return out.reshape(len(tokens), -1)


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


def _read_image(path: str, size: int, mode: str = "RGB") -> np.ndarray:
    from PIL import Image
    if not os.path.isfile(path):
        raise UserError(f"image {path} not found")
    with Image.open(path) as im:
        image = im.convert(mode)
    if image.size != (size, size):
        raise UserError(f"{path} is {image.size[0]}x{image.size[1]}; this model works at "
                        f"{size}x{size}")
    return np.asarray(image)


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    from muse_jax import metrics, sampling

    options = sampling.SamplingOptions(steps=FLAGS.steps, guidance=FLAGS.guidance,
                                       guidance_schedule=FLAGS.guidance_schedule,
                                       temperature=FLAGS.temperature, top_k=FLAGS.top_k)
    options.check()
    if FLAGS.num_images < 1:
        raise UserError(f"--num_images must be >= 1, got {FLAGS.num_images}")
    prompts = _read_prompts()
    editing = [name for name in ("mask", "outpaint") if FLAGS[name].value] + (["edit"] if FLAGS.edit else [])
    if len(editing) > 1:
        raise UserError(f"choose one of --mask, --outpaint, --edit (got {', '.join(editing)})")
    if editing and not FLAGS.image:
        raise UserError(f"--{editing[0]} needs --image")
    pipe = load_pipeline(FLAGS.workdir)
    size = pipe.config.data.image_size
    rows = [p for p in prompts for _ in range(FLAGS.num_images)]
    canvas = None
    if FLAGS.image:
        image = _read_image(FLAGS.image, size).astype(np.float32) / 127.5 - 1.0
        tokens = np.repeat(pipe.tokens_of(image[None]), len(rows), axis=0)
        if FLAGS.mask:
            pixel_mask = _read_image(FLAGS.mask, size, "L") > 127
            canvas = np.where(token_mask_from_pixels(pixel_mask, pipe.grid)[None],
                              pipe.model.mask_id, tokens)
        elif FLAGS.outpaint:
            direction, _, amount = FLAGS.outpaint.partition(":")
            canvas = shift_canvas(tokens, pipe.grid, direction, int(amount or 0), pipe.model.mask_id)
    if FLAGS.edit:
        result = sampling.edit_tokens(
            lambda c, s: sample_tokens(pipe, rows, options, s, FLAGS.negative_prompt, c,
                                       FLAGS.batch_size),
            tokens, FLAGS.edit, FLAGS.edit_mask_rate, pipe.model.mask_id, FLAGS.seed)
    else:
        result = sample_tokens(pipe, rows, options, FLAGS.seed, FLAGS.negative_prompt, canvas,
                               FLAGS.batch_size, progress=True)
    images = pipe.decode(result)
    grid = metrics.image_grid(*images.reshape(len(prompts), FLAGS.num_images, *images.shape[1:]),
                              columns=FLAGS.num_images)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    metrics.save_png(FLAGS.out, grid)
    settings = {"workdir": FLAGS.workdir, "prompts": prompts, "negative_prompt": FLAGS.negative_prompt,
                "num_images": FLAGS.num_images, "seed": FLAGS.seed, **dataclasses.asdict(options),
                "image": FLAGS.image, "mask": FLAGS.mask, "outpaint": FLAGS.outpaint,
                "edit": FLAGS.edit, "edit_mask_rate": FLAGS.edit_mask_rate}
    with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
        json.dump(settings, f, indent=2)
    logging.info("wrote %s", FLAGS.out)
    print(FLAGS.out)


if __name__ == "__main__":
    define_flags()
    errors.run(main)
