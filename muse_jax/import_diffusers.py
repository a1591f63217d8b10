"""Imports a local diffusers aMUSEd folder as muse_jax runs (see muse_jax/diffusers_import.py),
or a diffusers aMUSEd LoRA file as a LoRA fine-tune of such a run (muse_jax/diffusers_lora.py).

    python -m muse_jax.import_diffusers --src=/models/amused-256 --workdir=runs/amused-256
    python -m muse_jax.import_diffusers --lora=lora_out/pytorch_lora_weights.safetensors \\
        --base=runs/amused-256 --workdir=runs/amused-256-lora [--lora_alpha=32]
"""
from __future__ import annotations

from absl import flags

from muse_jax import errors

FLAGS = flags.FLAGS


def main(argv) -> None:
    if len(argv) > 1:
        raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.lora:
        if FLAGS.src or not FLAGS.base:
            raise errors.UserError("--lora is imported onto a run imported before: give --base=RUN "
                                   "(from --src=FOLDER, the aMUSEd it was trained on), not --src")
        from muse_jax import diffusers_lora

        out = diffusers_lora.import_lora(FLAGS.lora, FLAGS.base, FLAGS.workdir, FLAGS.lora_alpha)
    else:
        if not FLAGS.src or FLAGS.base or FLAGS.lora_alpha is not None:
            raise errors.UserError("give --src=FOLDER (an aMUSEd pipeline folder), or --lora=FILE "
                                   "with --base=RUN; --base and --lora_alpha go with --lora")
        from muse_jax import diffusers_import

        out = diffusers_import.import_amused(FLAGS.src, FLAGS.workdir)
    print(out)


if __name__ == "__main__":
    flags.DEFINE_string("src", None, "Local diffusers folder of an AmusedPipeline (amused-256/512).")
    flags.DEFINE_string("lora", None, "A diffusers aMUSEd LoRA file (pytorch_lora_weights."
                        "safetensors, as train_amused.py saves it) or its folder.")
    flags.DEFINE_string("base", None, "With --lora: the run imported (--src) from the aMUSEd the "
                        "LoRA was trained on; the new run is a LoRA fine-tune of it.")
    flags.DEFINE_float("lora_alpha", None, "With --lora: PEFT's lora_alpha (scale alpha / r). "
                       "Default: the file's metadata's, else r (scale 1), as diffusers loads it.")
    flags.DEFINE_string("workdir", None, "New run directory to write.")
    flags.mark_flags_as_required(["workdir"])
    errors.run(main)
