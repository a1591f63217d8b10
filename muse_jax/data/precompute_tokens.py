"""Tokenise a split's images once with the frozen VQGAN, so base training need not run it.

    python -m muse_jax.data.precompute_tokens --config=configs/base_shapes.py --split=train \
        --out=DIR [--batch_size=256] [--shard_size=10000] [--overwrite]

Every example of the split (`config.data`, in source order) is resized and centre-cropped to
`data.image_size` as for evaluation, encoded by the VQGAN of `config.tokenizer.workdir` in
jit-compiled batches spread over this host's devices, and written as record i (layout:
muse_jax/data/shards.py): a msgpack map {caption: str, tokens: [grid, grid] uint16, or int32
for codebooks over 65536}. The caption lets training check that record i still belongs to
example i. metadata.json adds grid_size, codebook_size, image_size, tokenizer_workdir, source
and split. A base run reads the directory through `data.train_tokens` / `data.eval_tokens`;
the tokens are of centre crops, so training from them has no random crop. One host only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import flags, logging
from flax import serialization
from ml_collections import config_flags

from muse_jax import errors
from muse_jax.config import ConfigError
from muse_jax.data import shards
from muse_jax.errors import UserError

FLAGS = flags.FLAGS
PREFIX = "tokens"


def define_flags() -> None:
    """Defined on demand, not at import, so the data pipeline can import TokenRecords."""
    config_flags.DEFINE_config_file("config", None, "Base-stage config (data + tokenizer).")
    flags.DEFINE_enum("split", None, ["train", "eval"], "Which split of config.data to encode.")
    flags.DEFINE_string("out", None, "Output directory for the ArrayRecord shards.")
    flags.DEFINE_integer("batch_size", 256, "Images per compiled call (rounded up to the devices).")
    flags.DEFINE_integer("shard_size", 10000, "Records per ArrayRecord shard.")
    flags.DEFINE_bool("overwrite", False, "Replace tokens already in --out.")


class TokenRecords(shards.ShardReader):
    """Random access to a precompute_tokens directory: `[i]` -> {"caption", "tokens" [h, w]}."""

    def __init__(self, directory: str | Path):
        super().__init__(directory, "image tokens", "muse_jax.data.precompute_tokens")
        self.grid_size = int(self.metadata["grid_size"])
        self.codebook_size = int(self.metadata["codebook_size"])

    def __getitem__(self, index: int) -> dict:
        item = serialization.msgpack_restore(self.read(index))
        return {"caption": item["caption"], "tokens": np.asarray(item["tokens"])}


def precompute_tokens(config, split: str, out: Path, batch_size: int = 256,
                      shard_size: int = 10000, overwrite: bool = False) -> Path:
    """Writes the token shards and metadata.json for `split` of `config.data`; returns `out`."""
    import grain
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from tqdm import tqdm

    from muse_jax.data import pipeline, sources
    from muse_jax.tasks import vqgan as vqgan_task

    if jax.process_count() > 1:
        raise UserError("precompute_tokens runs on one host; start it without --distributed")
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    out, data = Path(out), config.data
    source = sources.create_finite(data, split, config.seed)
    writer = shards.ShardWriter(out, PREFIX, len(source), shard_size)
    model, params, vq_config = vqgan_task.load_tokenizer(config.tokenizer.workdir)
    factor, codebook = model.downsample_factor, vq_config.model.codebook_size
    if data.image_size % factor:
        raise ConfigError(f"data.image_size {data.image_size} is not divisible by the tokenizer's "
                          f"downsampling factor {factor}")
    dtype = np.uint16 if codebook <= 65536 else np.int32
    shards.prepare_out(out, PREFIX, "precomputed tokens", overwrite)

    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    batch_size = -(-batch_size // mesh.size) * mesh.size  # every device gets the same rows
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode),
                     in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    ds = grain.MapDataset.source(source).map(
        pipeline.Preprocess(data.image_size, random_crop=False, keep_caption=True))
    it = ds.batch(batch_size).to_iter_dataset()
    if data.num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
    with tqdm(total=len(source), unit="image", desc=f"tokenising {split}") as progress:
        for batch in it:
            n = len(batch["image"])  # the last batch is padded: one compiled shape
            images = np.pad(batch["image"], ((0, batch_size - n), (0, 0), (0, 0), (0, 0)))
            ids = np.asarray(encode(params, images))[:n].astype(dtype)
            for caption, tokens in zip(batch["caption"], ids):
                writer.write(serialization.msgpack_serialize(
                    {"caption": str(caption), "tokens": tokens}))
            progress.update(n)
    writer.close({"grid_size": data.image_size // factor, "codebook_size": codebook,
                  "image_size": data.image_size, "tokenizer_workdir": config.tokenizer.workdir,
                  "source": data.source, "split": split, "tokens_dtype": np.dtype(dtype).name})
    return out


def main(argv) -> None:
    from muse_jax import config as config_lib

    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("config", "split", "out"):
        if FLAGS[name].value is None:
            raise UserError(f"--{name} is required")
    config_lib.validate(FLAGS.config)
    out = precompute_tokens(FLAGS.config, FLAGS.split, Path(FLAGS.out), FLAGS.batch_size,
                            FLAGS.shard_size, FLAGS.overwrite)
    logging.info("wrote the %s split's tokens to %s", FLAGS.split, out)


if __name__ == "__main__":
    define_flags()
    errors.run(main)
