"""Imports a local diffusers aMUSEd folder as muse_jax runs (see muse_jax/diffusers_import.py).

    python -m muse_jax.import_diffusers --src=/models/amused-256 --workdir=runs/amused-256
"""
from __future__ import annotations

from absl import flags

from muse_jax import errors

FLAGS = flags.FLAGS


def main(argv) -> None:
    if len(argv) > 1:
        raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    from muse_jax import diffusers_import

    out = diffusers_import.import_amused(FLAGS.src, FLAGS.workdir)
    print(out)


if __name__ == "__main__":
    flags.DEFINE_string("src", None, "Local diffusers folder of an AmusedPipeline (amused-256/512).")
    flags.DEFINE_string("workdir", None, "New run directory to write.")
    flags.mark_flags_as_required(["src", "workdir"])
    errors.run(main)
