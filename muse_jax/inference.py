"""Trained stages loaded for inference, with their compiled functions built once.

`load` opens a base run (`runs.open_run`) with its tokenizer and text encoder, `load_sr` a
super-resolution run checked to fit it. A `Pipeline` builds each compiled function (sampler,
editor, tokenizer encode and decode) once and keeps it, so repeated calls of the same shapes
(evaluation batches, editing) never trace or compile again. The functions below batch prompts,
show progress and return numpy arrays: they are what `sample`, `evaluate` and `demo` call.
Each row's random numbers depend on its position in the whole job (`first_row` + its index),
so a job cut into parts (as `sample` does, to bound its memory) makes the same images.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator

import jax
import numpy as np
from absl import logging

from muse_jax import runs, sampling
from muse_jax.errors import UserError
from muse_jax.images import to_model, to_uint8
from muse_jax.progress import bar


@dataclasses.dataclass
class Pipeline:
    """A trained base (or SR) model with its frozen tokenizer and text encoder, ready to sample."""
    run: runs.Run
    model: object
    params: object  # the EMA weights
    tokenizer: object
    tokenizer_params: object
    text_encoder: object
    _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def config(self):
        return self.run.config

    @property
    def grid(self) -> int:
        return self.config.model.grid_size

    @property
    def size(self) -> int:
        return self.config.data.image_size

    @property
    def mask_id(self) -> int:
        return self.model.mask_id

    def compiled(self, key, build: Callable) -> Callable:
        """`build()` the first time `key` is asked for, the same function every time after."""
        if key not in self._compiled:
            self._compiled[key] = build()
        return self._compiled[key]

    def generator(self, options: sampling.SamplingOptions) -> Callable:
        return self.compiled(("generate", options),
                             lambda: sampling.make_generate(self.model, options))

    def editor(self, options: sampling.SamplingOptions, edit: sampling.EditOptions) -> Callable:
        return self.compiled(("edit", options, edit),
                             lambda: sampling.make_edit(self.model, options, edit))

    def encode_text(self, prompts: list[str]):
        return self.text_encoder.encode(prompts)

    def blank(self, rows: int) -> np.ndarray:
        """An all-[MASK] canvas: generate every token."""
        return np.full((rows, self.grid * self.grid), self.mask_id, np.int32)

    def tokens_of(self, images: np.ndarray) -> np.ndarray:
        """Images [B,H,W,3] in [-1,1] -> token ids [B, h*w]."""
        encode = self.compiled("encode", lambda: jax.jit(functools.partial(
            self.tokenizer.apply, method=self.tokenizer.encode)))
        ids = encode({"params": self.tokenizer_params}, np.asarray(images, np.float32))
        return np.asarray(ids).reshape(len(images), -1)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids [B, h*w] -> images [B,H,W,3] in [-1,1]."""
        decode = self.compiled("decode", lambda: jax.jit(functools.partial(
            self.tokenizer.apply, method=self.tokenizer.decode)))
        ids = np.asarray(tokens, np.int32).reshape(len(tokens), self.grid, self.grid)
        return np.asarray(decode({"params": self.tokenizer_params}, ids))


def load(workdir: str, stage: str = "base", text_encoder=None,
         lora_scale: float = 1.0) -> Pipeline:
    """A base (or `stage="sr"`) run's EMA weights from its latest checkpoint, with its frozen
    parts; `text_encoder` reuses one already loaded. A LoRA fine-tune's weights are its
    `finetune.init_from` run's with the adapters added at `lora_scale` (tasks/finetune.py)."""
    from muse_jax.tasks import base as base_task
    from muse_jax.tasks import finetune
    from muse_jax.tasks import sr as sr_task
    from muse_jax.tasks import vqgan as vqgan_task
    from muse_jax.text import create_encoder

    run = runs.open_run(workdir, stage, "--workdir" if stage == "base" else "--sr_workdir")
    params = finetune.sampling_weights(run, lora_scale)
    tokenizer, tokenizer_params, _ = vqgan_task.load_tokenizer(run.config.tokenizer.workdir)
    build = base_task.build_model if stage == "base" else sr_task.build_model
    return Pipeline(run=run, model=build(run.config), params=params,
                    tokenizer=tokenizer, tokenizer_params=tokenizer_params,
                    text_encoder=text_encoder or create_encoder(run.config.text))


def load_sr(sr_workdir: str, base: Pipeline) -> Pipeline:
    """The super-resolution run of `sr_workdir`, checked to fit `base`: the same text encoder
    (both read one embedding of each prompt) and the base model's token grid and codebook."""
    pipe = load(sr_workdir, "sr", text_encoder=base.text_encoder)
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
    if s.low_res.image_size != b.data.image_size:
        raise UserError(f"{sr_workdir} works from {s.low_res.image_size} px, the base model "
                        f"makes {b.data.image_size} px images")
    if s.low_res.tokenizer_workdir != b.tokenizer.workdir:
        logging.warning("the SR run was trained on tokens of %s, the base model's tokenizer is %s",
                        s.low_res.tokenizer_workdir, b.tokenizer.workdir)
    return pipe


def batched(fn: Callable[[slice], object], rows: int, batch_size: int,
            progress: str | None = None):
    """`fn(part)` for consecutive slices of `rows` rows, `batch_size` at a time, outputs joined
    (arrays, or dicts of arrays); a progress bar named `progress` on stderr when one is given."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    starts = range(0, rows, batch_size)
    outs = [jax.device_get(fn(slice(start, start + batch_size)))
            for start in bar(starts, desc=progress, unit="batch", disable=progress is None)]
    if isinstance(outs[0], dict):
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return np.concatenate(outs)


def sample_to_grid(path: str, rows: Iterator[str], num_prompts: int, columns: int, size: int,
                   images_of: Callable[[list[str], int], np.ndarray], batch_size: int,
                   desc: str = "sampling") -> None:
    """Writes the PNG grid at `path` of `num_prompts` rows of `columns` images each, `rows`
    giving each image's prompt in grid order; `images_of(prompts, first_row)` makes the
    images [len(prompts), size, size, 3] in [-1, 1] of one batch (at most `batch_size`).

    Batch by batch, each finished grid row written as it completes (`grid_png.GridWriter`):
    memory holds one batch and one grid row however many prompts there are, and a job that
    fails leaves no partial file under `path`. A progress bar counts images on stderr.
    """
    import itertools

    from muse_jax.grid_png import GridWriter

    total = num_prompts * columns
    grid = GridWriter(path, num_prompts, columns, size, size)
    pending, first_row = [], 0
    try:
        with bar(total=total, unit="image", desc=desc, dynamic_ncols=True) as counter:
            while first_row < total:
                part = list(itertools.islice(rows, min(batch_size, total - first_row)))
                if not part:
                    raise UserError(f"{total - first_row} of the {total} images' prompts are "
                                    f"missing (did the prompts file change while sampling?)")
                pending.extend(images_of(part, first_row))
                while len(pending) >= columns:
                    grid.add_row(np.stack(pending[:columns]))
                    del pending[:columns]
                first_row += len(part)
                counter.update(len(part))
        grid.close()
    except BaseException:
        grid.abandon()
        raise


def _rng(seed: int, part: slice, first_row: int = 0):
    return jax.random.fold_in(jax.random.key(seed), first_row + part.start)


def sample_tokens(pipe: Pipeline, prompts: list[str], options, seed: int, negative: str = "",
                  canvas: np.ndarray | None = None, batch_size: int = 16,
                  progress: bool = False, first_row: int = 0) -> np.ndarray:
    """Token ids [P, N], one row a prompt, filling `canvas` (default: all [MASK])."""
    generate = pipe.generator(options)
    canvas = pipe.blank(len(prompts)) if canvas is None else canvas
    uncond = pipe.encode_text([negative])

    def part(p):
        return generate(pipe.params, *pipe.encode_text(prompts[p]), *uncond,
                        _rng(seed, p, first_row), canvas[p])

    return batched(part, len(prompts), batch_size, "sampling" if progress else None)


def sample_two_stage(pipe: Pipeline, sr_pipe: Pipeline, prompts: list[str], options,
                     sr_options, seed: int, negative: str = "", canvas: np.ndarray | None = None,
                     sr_canvas: np.ndarray | None = None, batch_size: int = 16,
                     progress: bool = False, first_row: int = 0) -> dict[str, np.ndarray]:
    """Base then SR then the high-res decoder, one compiled call a batch (`sampling.make_cascade`),
    filling `canvas` and `sr_canvas` (default: all [MASK]; see `inpaint_canvases`).

    Returns {"low_res": [P, n], "tokens": [P, N], "images": [P, H, W, 3] in [-1, 1]}.
    """
    cascade = pipe.compiled(("cascade", sr_pipe.run.path, options, sr_options),
                            lambda: sampling.make_cascade(pipe.model, sr_pipe.model, options,
                                                          sr_options, decoder=sr_pipe.tokenizer))
    params = {"base": pipe.params, "sr": sr_pipe.params, "decoder": sr_pipe.tokenizer_params}
    canvas = pipe.blank(len(prompts)) if canvas is None else canvas
    sr_canvas = sr_pipe.blank(len(prompts)) if sr_canvas is None else sr_canvas
    uncond = pipe.encode_text([negative])

    def part(p):
        return cascade(params, *pipe.encode_text(prompts[p]), *uncond, _rng(seed, p, first_row),
                       canvas[p], sr_canvas[p])

    return batched(part, len(prompts), batch_size, "sampling" if progress else None)


def super_resolve(sr_pipe: Pipeline, low_res: np.ndarray, prompts: list[str], options, seed: int,
                  negative: str = "", batch_size: int = 16, first_row: int = 0) -> np.ndarray:
    """High-res token ids [P, N] for given low-res tokens [P, n] (an edited or a real image's)."""
    generate = sr_pipe.generator(options)
    uncond = sr_pipe.encode_text([negative])
    blank = sr_pipe.blank(len(prompts))
    low_res = np.asarray(low_res, np.int32)

    def part(p):
        return generate(sr_pipe.params, *sr_pipe.encode_text(prompts[p]), *uncond,
                        _rng(seed, p, first_row), blank[p], low_res[p])

    return batched(part, len(prompts), batch_size)


def edit(pipe: Pipeline, tokens: np.ndarray, prompts: list[str], options,
         edit_options: sampling.EditOptions, seed: int, negative: str = "",
         batch_size: int = 16, progress: bool = False, first_row: int = 0) -> np.ndarray:
    """Mask-free editing (`sampling.make_edit`) of `tokens` [P, N] towards `prompts`."""
    run = pipe.editor(options, edit_options)
    uncond = pipe.encode_text([negative])

    def part(p):
        return run(pipe.params, *pipe.encode_text(prompts[p]), *uncond, _rng(seed, p, first_row),
                   tokens[p])

    return batched(part, len(prompts), batch_size, "editing" if progress else None)


def token_mask_from_pixels(pixel_mask: np.ndarray, grid: int) -> np.ndarray:
    """A token is regenerated if any pixel of its patch is masked. [H,W] bool -> [grid*grid]."""
    h, w = pixel_mask.shape
    if h % grid or w % grid:
        raise UserError(f"mask of {w}x{h} pixels does not divide into the {grid}x{grid} token grid")
    patches = pixel_mask.reshape(grid, h // grid, grid, w // grid)
    return patches.any(axis=(1, 3)).reshape(-1)


def paste_unchanged(result: np.ndarray, image: np.ndarray, result_tokens: np.ndarray,
                    image_tokens: np.ndarray, margin: int = 2) -> np.ndarray:
    """`result` [B,H,W,3] with `image`'s own pixels wherever the edit left its tokens as they were.

    Not in Muse, whose edits return the decoder's drawing of every token, so what an edit keeps
    is no sharper than the tokenizer draws it. Here a token counts as unchanged when it and every
    token within `margin` of it (the decoder mixes neighbours) equal `image_tokens`
    ([B, grid*grid], of `image`; a [MASK] never does); the output takes `image` there and
    `result` elsewhere, blended over one token's width at the seam. Either image may be larger
    than the grid by any whole factor (the SR stage's), and `image` is aligned with `result`
    (an outpainting's input shifted as its tokens were).

    The margin of 2 tokens: mask-free edits of the demo's model (96 held-out scenes, 2026-12-07,
    `--edit_keep=24`, guidance 1, temperature 0.5) showed the asked change in 67.7 % of results
    unpasted and in 44.8 / 64.6 / 66.7 / 67.7 % pasted at margins 0 / 1 / 2 / 3, at 29.2 dB
    unpasted and 53.2 / 42.8 / 38.2 / 35.2 dB pasted outside the changed cell (every other object
    kept in all): where an edit leaves a token of the old object beside new ones, the input's
    sharp pixels show it and the oracle reads a mix.
    """
    from scipy import ndimage

    batch, height, width, _ = result.shape
    grid = round(np.sqrt(result_tokens.shape[-1]))
    if height % grid or width % grid or image.shape != result.shape:
        raise UserError(f"cannot paste {image.shape[1:3]} px inputs into {height}x{width} px "
                        f"results of a {grid}x{grid} token grid")
    same = (result_tokens == image_tokens).reshape(batch, grid, grid)
    if margin:
        same = ndimage.binary_erosion(same, np.ones((1, 3, 3), bool), iterations=margin,
                                      border_value=1)
    patch = (height // grid, width // grid)
    weight = same.astype(np.float32).repeat(patch[0], axis=1).repeat(patch[1], axis=2)
    weight = ndimage.uniform_filter(weight, size=(1, *patch), mode="nearest")[..., None]
    return weight * image + (1.0 - weight) * result


def shift_canvas(tokens: np.ndarray, grid: int, direction: str, amount: int, mask_id: int):
    """Outpainting: the image's tokens moved away from `direction` by `amount`; the gap masked."""
    if direction not in ("left", "right", "up", "down") or not 0 < amount < grid:
        raise UserError(f"--outpaint must be left|right|up|down:N with 0 < N < {grid}, "
                        f"got {direction}:{amount}")
    ids = shift(tokens.reshape(-1, grid, grid), direction, amount, mask_id)
    return ids.reshape(len(tokens), -1)


def shift_image(images: np.ndarray, grid: int, direction: str, amount: int) -> np.ndarray:
    """Images [B,H,W,3] in [-1,1] moved as `shift_canvas` moves their tokens (`amount` of
    `grid` tokens a side), the gap black: what `paste_unchanged` pastes into an outpainting."""
    pixels = images.shape[2 if direction in ("left", "right") else 1] // grid
    return shift(images, direction, amount * pixels, -1.0)


def shift(images: np.ndarray, direction: str, amount: int, fill) -> np.ndarray:
    """[B,H,W,...] moved away from `direction` by `amount` rows or columns, the gap `fill`ed."""
    out = np.full_like(images, fill)
    if direction == "left":
        out[:, :, amount:] = images[:, :, :-amount]
    elif direction == "right":
        out[:, :, :-amount] = images[:, :, amount:]
    elif direction == "up":
        out[:, amount:] = images[:, :-amount]
    else:
        out[:, :-amount] = images[:, amount:]
    return out


def decimate(images: np.ndarray, size: int) -> np.ndarray:
    """Images [B,H,W,3] in [-1,1] averaged down to `size` px (box filter), as Muse's inpainting
    decimates a 512 px input to the base model's 256 px."""
    from PIL import Image
    return to_model(np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BOX))
                              for im in to_uint8(images)]))


def inpaint_canvases(pipe: Pipeline, sr_pipe: Pipeline, images: np.ndarray,
                     pixel_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Muse's text-guided inpainting at two resolutions: the canvases of `sample_two_stage`.

    images [B,H,W,3] in [-1,1] at the SR run's size, pixel_masks [B,H,W] (True: regenerate).
    The input is decimated to the base resolution and tokenized at both; a token of either
    grid is masked if any pixel of its patch is, so the low-res mask covers the high-res one.
    """
    low = pipe.tokens_of(decimate(images, pipe.size))
    high = sr_pipe.tokens_of(images)
    hole_low = np.stack([token_mask_from_pixels(m, pipe.grid) for m in pixel_masks])
    hole_high = np.stack([token_mask_from_pixels(m, sr_pipe.grid) for m in pixel_masks])
    return (np.where(hole_low, pipe.mask_id, low).astype(np.int32),
            np.where(hole_high, sr_pipe.mask_id, high).astype(np.int32))


def outpaint_canvases(pipe: Pipeline, sr_pipe: Pipeline, images: np.ndarray, direction: str,
                      amount: int) -> tuple[np.ndarray, np.ndarray]:
    """Outpainting at two resolutions: the input (at the SR size) decimated and tokenized at
    both, each grid shifted by `amount` base-grid tokens (the same share of the image)."""
    if sr_pipe.grid % pipe.grid:
        raise UserError(f"outpainting needs the SR grid ({sr_pipe.grid}) to be a multiple of the "
                        f"base grid ({pipe.grid})")
    low = pipe.tokens_of(decimate(images, pipe.size))
    high = sr_pipe.tokens_of(images)
    return (shift_canvas(low, pipe.grid, direction, amount, pipe.mask_id),
            shift_canvas(high, sr_pipe.grid, direction, amount * (sr_pipe.grid // pipe.grid),
                         sr_pipe.mask_id))
