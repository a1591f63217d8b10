"""Tokenise a split's images once with the frozen VQGAN, so base training need not run it.

    python -m muse_jax.data.precompute_tokens --config=configs/base_shapes.py --split=train \
        --out=DIR [--batch_size=256] [--shard_size=10000] [--overwrite]

The command only: the tokenising and writing is muse_jax/data/tokens.py, the record format and
its reader (`TokenRecords`) muse_jax/data/shards.py. A base run reads the directory through
`data.train_tokens` / `data.eval_tokens`. As a CLI this module sits at the top layer (see
tests/test_layers.py), so it may import the tokenizer loader from muse_jax.tasks.vqgan.
"""
from __future__ import annotations

from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from muse_jax import errors
from muse_jax.data import tokens
from muse_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined on demand, not at import."""
    config_flags.DEFINE_config_file("config", None, "Base-stage config (data + tokenizer).")
    flags.DEFINE_enum("split", None, ["train", "eval"], "Which split of config.data to encode.")
    flags.DEFINE_string("out", None, "Output directory for the ArrayRecord shards.")
    flags.DEFINE_integer("batch_size", 256, "Images per compiled call (rounded up to the devices).")
    flags.DEFINE_integer("shard_size", 10000, "Records per ArrayRecord shard.")
    flags.DEFINE_bool("overwrite", False, "Replace tokens already in --out.")


def main(argv) -> None:
    from muse_jax import config as config_lib
    from muse_jax.tasks import vqgan as vqgan_task  # heavy: imported once the flags are read

    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("config", "split", "out"):
        if FLAGS[name].value is None:
            raise UserError(f"--{name} is required")
    config_lib.validate(FLAGS.config)
    out = tokens.precompute_tokens(FLAGS.config, FLAGS.split, Path(FLAGS.out),
                                   vqgan_task.load_tokenizer, FLAGS.batch_size, FLAGS.shard_size,
                                   FLAGS.overwrite)
    logging.info("wrote the %s split's tokens to %s", FLAGS.split, out)


if __name__ == "__main__":
    define_flags()
    errors.run(main)
