"""Generates or edits images with a trained base model, optionally super-resolved.

  python -m muse_jax.sample --workdir=workdirs/base_shapes --prompt="a red circle at the center" \
      --num_images=4 --out=grid.png
  ... --prompts_file=prompts.txt --negative_prompt="a blue square" --steps=12 --guidance=3
  ... --image=in.png --mask=mask.png --prompt=...      # inpaint where the mask is white
  ... --image=in.png --outpaint=left:4 --prompt=...    # shift 4 token columns right, fill the left
  ... --image=in.png --edit=8 --prompt=...             # mask-free editing, 8 iterations
  ... --sr_workdir=workdirs/sr_shapes --sr_steps=8       # then super-resolution (Muse 2.4)

Writes the PNG grid (one row a prompt, --num_images columns) and, beside it, a JSON file of the
settings used. The same flags and seed give the same images. With --sr_workdir the base tokens
go through the super-resolution model and its tokenizer's decoder in the same compiled call, so
the grid is at the SR run's resolution; edited tokens (--edit) are super-resolved afterwards.
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
    flags.DEFINE_string("sr_workdir", None, "Workdir of a trained super-resolution run: the "
                        "base model's tokens are then super-resolved and decoded at its size.")
    flags.DEFINE_integer("sr_steps", 8, "Super-resolution decoding steps (Muse: 8).")
    flags.DEFINE_float("sr_guidance", 4.0, "Final guidance scale of the super-resolution stage.")


@dataclasses.dataclass
class Pipeline:
    """A trained base (or SR) model with its frozen tokenizer and text encoder, ready to sample."""
    config: object
    model: object
    params: object  # the EMA weights
    tokenizer: object
    tokenizer_params: object
    text_encoder: object
    grid: int
    _generators: dict = dataclasses.field(default_factory=dict, repr=False)

    def generator(self, options):
        """The compiled sampler for `options`, built once: editing calls it again and again."""
        from muse_jax import sampling
        if options not in self._generators:
            self._generators[options] = sampling.make_generate(self.model, options)
        return self._generators[options]

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


def load_pipeline(workdir: str, stage: str = "base", text_encoder=None) -> Pipeline:
    """Reads a base (or `stage="sr"`) run's config.json and latest checkpoint (EMA weights), then
    its frozen parts; `text_encoder` reuses one already loaded."""
    import ml_collections

    from muse_jax import checkpoint
    from muse_jax.tasks import base as base_task
    from muse_jax.tasks import sr as sr_task
    from muse_jax.tasks import vqgan as vqgan_task
    from muse_jax.text import create_encoder

    flag, config_name = (("--workdir", "base_shapes") if stage == "base"
                         else ("--sr_workdir", "sr_shapes"))
    config_file = os.path.join(workdir or "", "config.json")
    if not workdir or not os.path.isfile(config_file):
        raise UserError(f"{flag} {workdir!r} has no config.json: train a {stage} model first "
                        f"(python -m muse_jax.train --config=configs/{config_name}.py --workdir=DIR)")
    with open(config_file) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.stage != stage:
        raise UserError(f"{workdir} is a {config.stage!r} run; {flag} needs a {stage}-stage run")
    try:
        state = checkpoint.load_state(os.path.join(workdir, "checkpoints"))
    except FileNotFoundError:
        raise UserError(f"no checkpoint found under {workdir}/checkpoints") from None
    tokenizer, tokenizer_params, _ = vqgan_task.load_tokenizer(config.tokenizer.workdir)
    build = base_task.build_model if stage == "base" else sr_task.build_model
    return Pipeline(config=config, model=build(config), params=state["ema_params"],
                    tokenizer=tokenizer, tokenizer_params=tokenizer_params,
                    text_encoder=text_encoder or create_encoder(config.text),
                    grid=config.model.grid_size)


def load_sr_pipeline(sr_workdir: str, base: Pipeline) -> Pipeline:
    """The super-resolution run of `sr_workdir`, checked to fit `base`: the same text encoder
    (both read one embedding of each prompt) and the base model's token grid and codebook."""
    pipe = load_pipeline(sr_workdir, "sr", text_encoder=base.text_encoder)
    b, s = base.config, pipe.config
    text = lambda c: (c.text.encoder, c.text.path, c.text.max_length)  # noqa: E731
    if text(b) != text(s):
        raise UserError(f"the base and SR runs use different text encoders: {text(b)} and "
                        f"{text(s)}")
    if (s.model.low_res_grid_size, s.model.low_res_codebook_size) != (b.model.grid_size,
                                                                      b.model.codebook_size):
        raise UserError(f"{sr_workdir} super-resolves {s.model.low_res_grid_size}^2 tokens of a "
                        f"{s.model.low_res_codebook_size}-code tokenizer; the base model makes "
                        f"{b.model.grid_size}^2 tokens of a {b.model.codebook_size}-code one")
    if os.path.normpath(s.low_res.tokenizer_workdir) != os.path.normpath(b.tokenizer.workdir):
        logging.warning("the SR run was trained on tokens of %s, the base model's tokenizer is %s",
                        s.low_res.tokenizer_workdir, b.tokenizer.workdir)
    return pipe


def sample_tokens(pipe: Pipeline, prompts: list[str], options, seed: int, negative: str = "",
                  canvas: np.ndarray | None = None, batch_size: int = 16,
                  progress: bool = False) -> np.ndarray:
    """Token ids [len(prompts), N] for each prompt (and canvas row), batch by batch."""
    import jax
    from tqdm import tqdm

    generate = pipe.generator(options)
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


def sample_two_stage(pipe: Pipeline, sr_pipe: Pipeline, prompts: list[str], options,
                     sr_options, seed: int, negative: str = "", canvas: np.ndarray | None = None,
                     batch_size: int = 16, progress: bool = False) -> dict[str, np.ndarray]:
    """Base then SR then the high-res decoder, one compiled call a batch (`sampling.make_cascade`).

    Returns {"low_res": [P, n], "tokens": [P, N], "images": [P, H, W, 3] in [-1, 1]}.
    """
    import jax
    from tqdm import tqdm

    from muse_jax import sampling

    cascade = sampling.make_cascade(pipe.model, sr_pipe.model, options, sr_options,
                                    decoder=sr_pipe.tokenizer)
    params = {"base": pipe.params, "sr": sr_pipe.params, "decoder": sr_pipe.tokenizer_params}
    if canvas is None:
        canvas = np.full((len(prompts), pipe.grid * pipe.grid), pipe.model.mask_id, np.int32)
    uncond_emb, uncond_mask = pipe.encode_text([negative])
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="sampling", unit="batch",
                      disable=not progress):
        emb, mask = pipe.encode_text(prompts[start:start + batch_size])
        rng = jax.random.fold_in(jax.random.key(seed), start)
        out.append(jax.device_get(cascade(params, emb, mask, uncond_emb, uncond_mask, rng,
                                          canvas[start:start + batch_size])))
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def super_resolve(sr_pipe: Pipeline, low_res: np.ndarray, prompts: list[str], options, seed: int,
                  negative: str = "", batch_size: int = 16) -> np.ndarray:
    """High-res token ids [P, N] for given low-res tokens [P, n] (an edited or a real image's)."""
    import jax

    generate = sr_pipe.generator(options)
    uncond_emb, uncond_mask = sr_pipe.encode_text([negative])
    blank = np.full((len(prompts), sr_pipe.grid ** 2), sr_pipe.model.mask_id, np.int32)
    out = []
    for start in range(0, len(prompts), batch_size):
        emb, mask = sr_pipe.encode_text(prompts[start:start + batch_size])
        rng = jax.random.fold_in(jax.random.key(seed), start)
        part = slice(start, start + batch_size)
        out.append(np.asarray(generate(sr_pipe.params, emb, mask, uncond_emb, uncond_mask, rng,
                                       blank[part], np.asarray(low_res[part], np.int32))))
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


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    from muse_jax import metrics, sampling
    from muse_jax.images import load_image, load_mask

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
    if FLAGS.image and not editing:
        raise UserError("--image needs one of --mask, --outpaint, --edit")
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    pipe = load_pipeline(FLAGS.workdir)
    sr_pipe = load_sr_pipeline(FLAGS.sr_workdir, pipe) if FLAGS.sr_workdir else None
    sr_options = dataclasses.replace(options, steps=FLAGS.sr_steps, guidance=FLAGS.sr_guidance)
    sr_options.check()
    size = pipe.config.data.image_size
    rows = [p for p in prompts for _ in range(FLAGS.num_images)]
    canvas = None
    if FLAGS.image:
        image = load_image(FLAGS.image, size)
        tokens = np.repeat(pipe.tokens_of(image[None]), len(rows), axis=0)
        if FLAGS.mask:
            pixel_mask = load_mask(FLAGS.mask, size)
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
        if sr_pipe is not None:
            result = super_resolve(sr_pipe, result, rows, sr_options, FLAGS.seed,
                                   FLAGS.negative_prompt, FLAGS.batch_size)
        images = (sr_pipe or pipe).decode(result)
    elif sr_pipe is not None:
        images = sample_two_stage(pipe, sr_pipe, rows, options, sr_options, FLAGS.seed,
                                  FLAGS.negative_prompt, canvas, FLAGS.batch_size,
                                  progress=True)["images"]
    else:
        images = pipe.decode(sample_tokens(pipe, rows, options, FLAGS.seed, FLAGS.negative_prompt,
                                           canvas, FLAGS.batch_size, progress=True))
    grid = metrics.image_grid(*images.reshape(len(prompts), FLAGS.num_images, *images.shape[1:]),
                              columns=FLAGS.num_images)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    metrics.save_png(FLAGS.out, grid)
    settings = {"workdir": FLAGS.workdir, "prompts": prompts, "negative_prompt": FLAGS.negative_prompt,
                "num_images": FLAGS.num_images, "seed": FLAGS.seed, **dataclasses.asdict(options),
                "image": FLAGS.image, "mask": FLAGS.mask, "outpaint": FLAGS.outpaint,
                "edit": FLAGS.edit, "edit_mask_rate": FLAGS.edit_mask_rate,
                "sr_workdir": FLAGS.sr_workdir}
    if sr_pipe is not None:
        settings.update(sr_steps=FLAGS.sr_steps, sr_guidance=FLAGS.sr_guidance)
    with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
        json.dump(settings, f, indent=2)
    logging.info("wrote %s", FLAGS.out)
    print(FLAGS.out)


if __name__ == "__main__":
    define_flags()
    errors.run(main)
