"""Encode captions once and store the embeddings, so training need not run the encoder.

    python -m muse_jax.text.precompute --config=configs/base_256.py --captions=captions.txt \
        --out=/data/cc3m_t5xxl [--embedding_dtype=float16] [--shard_size=10000]
    python -m muse_jax.text.precompute --config=configs/base_256.py --split=train --out=...

The config is any config with a `text` block (see muse_jax/text/__init__.py). The captions
file is UTF-8 with one caption per line; line i becomes record i (an empty line is a valid,
empty caption), so records stay aligned with the image data the captions came from.
`--split` instead reads the captions of that split of `config.data`, in source order: the
directory a base run names in `data.train_text_embeddings` / `data.eval_text_embeddings`.
The command only: the encoding and writing is muse_jax/text/embeddings.py, the output format
and its reader (`EmbeddingRecords`) muse_jax/data/shards.py; `metadata.json` is written last,
so a directory without it is an interrupted run.
"""
from __future__ import annotations

from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from muse_jax import errors
from muse_jax.errors import UserError
from muse_jax.text import embeddings

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined on demand, not at import."""
    config_flags.DEFINE_config_file("config", None, "Config file with a `text` block.")
    flags.DEFINE_string("captions", None, "UTF-8 text file, one caption per line.")
    flags.DEFINE_enum("split", None, ["train", "eval"],
                      "Instead of --captions: the captions of this split of config.data.")
    flags.DEFINE_string("out", None, "Output directory for the ArrayRecord shards.")
    flags.DEFINE_enum("embedding_dtype", "float16", ["float16", "float32"],
                      "Stored embedding dtype; float16 halves the size.")
    flags.DEFINE_integer("shard_size", 10000, "Records per ArrayRecord shard.")
    flags.DEFINE_bool("overwrite", False, "Replace embeddings already in --out.")


def read_captions(path: str | Path) -> list[str]:
    """Line i of the file is caption i; a final newline does not add an empty caption."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"captions file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"captions file {path} is not UTF-8 (line {line}: {e.reason})") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise UserError(f"captions file {path} is empty")
    return lines


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    config_file = flags.FLAGS["config"].value and config_flags.get_config_filename(flags.FLAGS["config"])
    for name, flag in (("--config", config_file), ("--out", FLAGS.out)):
        if not flag:
            raise UserError(f"{name} is required")
    if bool(FLAGS.captions) == bool(FLAGS.split):
        raise UserError("pass either --captions=FILE or --split=train|eval")
    if not Path(config_file.split(":")[0]).is_file():  # "file.py:variant" names file.py
        raise UserError(f"config file {config_file} not found")
    config = FLAGS.config
    for block in ("text",) + (("data",) if FLAGS.split else ()):
        if block not in config:
            raise UserError(f"{config_file} has no `{block}` block")
    if FLAGS.split:
        from muse_jax.data import sources
        captions = sources.captions(sources.create_finite(config.data, FLAGS.split, config.seed))
    else:
        captions = read_captions(FLAGS.captions)
    out = embeddings.precompute(config.text, captions, Path(FLAGS.out), FLAGS.embedding_dtype,
                                FLAGS.shard_size, FLAGS.overwrite)
    logging.info("wrote %d caption embeddings to %s", len(captions), out)


if __name__ == "__main__":
    define_flags()
    errors.run(main)
