"""Merges a LoRA fine-tune's adapters into its base weights: a standalone run.

    python -m muse_jax.merge_lora --workdir=FINETUNE_RUN --out=DIR [--lora_scale=1.0]

DIR is then an ordinary run of the fine-tune's stage (config.json + one checkpoint): `sample`,
`evaluate` and a further `finetune.init_from` open it without the run it was tuned from.
"""
from __future__ import annotations

from absl import flags

from muse_jax import errors

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Workdir of a LoRA fine-tune (finetune.lora.rank > 0).")
    flags.DEFINE_string("out", None, "Directory of the merged run (must not hold a run).")
    flags.DEFINE_float("lora_scale", 1.0, "The adapters x this before merging (1: as trained).")


def main(argv) -> None:
    from muse_jax.tasks import finetune

    if len(argv) > 1:
        raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir or not FLAGS.out:
        raise errors.UserError("--workdir and --out are required")
    out = finetune.export_merged(FLAGS.workdir, FLAGS.out, FLAGS.lora_scale)
    print(f"merged {FLAGS.workdir} into {out}")


if __name__ == "__main__":
    define_flags()
    errors.run(main)
