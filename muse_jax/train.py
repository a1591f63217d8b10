"""Trains the stage named by the config (the loop: muse_jax/training.py).

  python -m muse_jax.train --config=configs/vqgan_shapes.py --workdir=/tmp/vqgan
  python -m muse_jax.train --config=configs/vqgan_256.py --dry_run --num_devices=8

Everything a run writes lives under --workdir; running the same command again resumes from
the latest checkpoint. SIGTERM saves a checkpoint and exits with status 143, Ctrl-C with 130
(see training.py); a second run on the same workdir is refused (muse_jax/workdir_lock.py).
"""
from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from muse_jax import distributed, errors, training
from muse_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined on demand, not at import, so tests and tools can import this module."""
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/vqgan_shapes.py.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and outputs.")
    flags.DEFINE_bool("dry_run", False, "Build the state abstractly, print sizes, train nothing.")
    flags.DEFINE_integer("num_devices", None, "Dry run only: simulate this many CPU devices.")
    flags.DEFINE_bool("dry_run_json", False, "Dry run only: print the report as JSON.")
    flags.DEFINE_float("device_memory_gib", 16.0, "Dry run only: memory a device has, to pick "
                       "a mesh for (TPU v5e 16, v4 32, v5p 95).")
    distributed.define()


def _config_argument() -> str:
    """The --config value as given (file and variant), to title the dry-run table."""
    return FLAGS["config"].serialize().partition("=")[2] or "config"


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.config is None:
        raise UserError("--config is required, e.g. --config=configs/vqgan_shapes.py")
    if FLAGS.dry_run:
        training.dry_run(FLAGS.config, FLAGS.num_devices, as_json=FLAGS.dry_run_json,
                memory_gib=FLAGS.device_memory_gib, title=_config_argument())
        return
    if not FLAGS.workdir:
        raise UserError("--workdir is required")
    distributed.initialize_from_flags()
    training.train_and_evaluate(FLAGS.config, FLAGS.workdir, progress_bar=sys.stderr.isatty())


if __name__ == "__main__":
    define_flags()
    errors.run(main)
