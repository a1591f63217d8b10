"""Scores a trained base model by sampling held-out prompts (muse_jax/shapes_evals.py).

  python -m muse_jax.evaluate --workdir=workdirs/base_shapes --eval=shapes_oracle --num_samples=256
  python -m muse_jax.evaluate --eval=shapes_inpaint --workdir=workdirs/base_shapes \
      [--sr_workdir=workdirs/sr_shapes]          # inpainting, at the SR resolution when given
  python -m muse_jax.evaluate --eval=shapes_edit --workdir=workdirs/base_shapes --num_samples=64
  python -m muse_jax.evaluate --eval=shapes_sr --workdir=workdirs/base_shapes \
      --sr_workdir=workdirs/sr_shapes --num_samples=256

`shapes_oracle`: held-out captions, the oracle's reading of each image. `shapes_phrasings`: the
same scenes captioned in phrasings training never used (data/shapes_captions.py). `shapes_inpaint`: one
object's cell regenerated as another object. `shapes_edit`: mask-free editing of one object by
prompt. `shapes_sr`: super-resolution (needs --sr_workdir). Prints one JSON object with the
scores and the sampling settings used.
"""
from __future__ import annotations

import dataclasses
import json

from absl import flags

from muse_jax import errors, sampling_flags
from muse_jax.errors import UserError

FLAGS = flags.FLAGS
EVALS = ("shapes_oracle", "shapes_phrasings", "shapes_inpaint", "shapes_edit", "shapes_sr")


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Workdir of a trained base-stage run.")
    flags.DEFINE_enum("eval", "shapes_oracle", list(EVALS), "Which evaluation.")
    flags.DEFINE_integer("num_samples", 256, "Held-out prompts to sample (one image each).")
    flags.DEFINE_integer("batch_size", 64, "Images per compiled call.")
    sampling_flags.define()


def evaluate(workdir: str, eval_name: str, num_samples: int, options, seed: int = 0,
             batch_size: int = 64, sr_workdir: str | None = None, sr_options=None,
             edit_options=None, lora_scale: float = 1.0) -> dict:
    """Runs `eval_name` on the base run of `workdir` (and the SR run of `sr_workdir`)."""
    from muse_jax import inference, sampling, shapes_evals

    options.check()
    if num_samples < 1:
        raise UserError(f"--num_samples must be >= 1, got {num_samples}")
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    if eval_name == "shapes_sr" and not sr_workdir:
        raise UserError("--eval=shapes_sr needs --sr_workdir (a super-resolution run)")
    if sr_workdir and eval_name not in ("shapes_sr", "shapes_inpaint"):
        raise UserError(f"--sr_workdir is for --eval=shapes_sr or shapes_inpaint, not {eval_name}")
    pipe = inference.load(workdir, lora_scale=lora_scale)
    settings = {"eval": eval_name, "workdir": workdir, "num_samples": num_samples, "seed": seed,
                **dataclasses.asdict(options)}
    if lora_scale != 1.0:
        settings["lora_scale"] = lora_scale
    if sr_workdir:
        sr_options = sr_options or dataclasses.replace(options, steps=8)
        sr_options.check()
        sr_pipe = inference.load_sr(sr_workdir, pipe)
        settings.update(sr_workdir=sr_workdir,
                        **{f"sr_{k}": v for k, v in dataclasses.asdict(sr_options).items()})
    if eval_name == "shapes_sr":
        scores = shapes_evals.shapes_sr(pipe, sr_pipe, options, sr_options, num_samples, seed,
                                        batch_size)
    elif eval_name == "shapes_inpaint":
        scores = shapes_evals.shapes_inpaint(pipe, options, num_samples, seed, batch_size,
                                             *((sr_pipe, sr_options) if sr_workdir else ()))
    elif eval_name == "shapes_edit":
        edit_options = edit_options or sampling.EditOptions()
        settings.update({f"edit_{k}": v for k, v in dataclasses.asdict(edit_options).items()})
        scores = shapes_evals.shapes_edit(pipe, options, edit_options, num_samples, seed,
                                          batch_size)
    else:
        phrasing = "held_out" if eval_name == "shapes_phrasings" else "canonical"
        scores = shapes_evals.shapes_oracle(pipe, options, num_samples, seed, batch_size, phrasing)
    return {**settings, **scores}


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    result = evaluate(FLAGS.workdir, FLAGS.eval, FLAGS.num_samples, sampling_flags.options(),
                      FLAGS.seed, FLAGS.batch_size, FLAGS.sr_workdir, sampling_flags.sr_options(),
                      sampling_flags.edit_options(), FLAGS.lora_scale)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    define_flags()
    errors.run(main)
