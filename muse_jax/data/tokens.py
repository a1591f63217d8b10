"""A split's image tokens, computed once by the frozen VQGAN so base training need not run it.

Every example of the split (`config.data`, in source order) is resized and centre-cropped to
`data.image_size` as for evaluation, encoded by the tokenizer of `config.tokenizer.workdir` in
jit-compiled batches spread over this host's devices, and written as record i of a
`TokenRecords` directory (format: muse_jax/data/shards.py). A base run reads the directory
through `data.train_tokens` / `data.eval_tokens`; the tokens are of centre crops, so training
from them has no random crop. One host only. The command: `python -m
muse_jax.data.precompute_tokens`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from muse_jax.config import ConfigError
from muse_jax.data import shards, sources
from muse_jax.data.transforms import Preprocess
from muse_jax.errors import UserError


def precompute_tokens(config, split: str, out: Path, load_tokenizer: Callable[[str], Any],
                      batch_size: int = 256, shard_size: int = 10000,
                      overwrite: bool = False) -> Path:
    """Writes the token shards and metadata.json for `split` of `config.data`; returns `out`.

    `load_tokenizer` is muse_jax.tasks.vqgan.load_tokenizer (workdir -> model, params, config),
    passed in because data/ sits below tasks/; it is called once the split and sizes are checked.
    """
    import grain
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from muse_jax.progress import bar

    if jax.process_count() > 1:
        raise UserError("precompute_tokens runs on one host; start it without --distributed")
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    out, data = Path(out), config.data
    source = sources.create_finite(data, split, config.seed)
    writer = shards.ShardWriter(out, shards.TOKENS, len(source), shard_size)
    model, params, vq_config = load_tokenizer(config.tokenizer.workdir)
    factor, codebook = model.downsample_factor, vq_config.model.codebook_size
    if data.image_size % factor:
        raise ConfigError(f"data.image_size {data.image_size} is not divisible by the tokenizer's "
                          f"downsampling factor {factor}")
    dtype = np.uint16 if codebook <= 65536 else np.int32
    shards.prepare_out(out, shards.TOKENS, "precomputed tokens", overwrite)

    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    batch_size = -(-batch_size // mesh.size) * mesh.size  # every device gets the same rows
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode),
                     in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    ds = grain.MapDataset.source(source).map(
        Preprocess(data.image_size, random_crop=False, keep_caption=True))
    it = ds.batch(batch_size).to_iter_dataset()
    if data.num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
    with bar(total=len(source), unit="image", desc=f"tokenising {split}") as progress:
        for batch in it:
            n = len(batch["image"])  # the last batch is padded: one compiled shape
            images = np.pad(batch["image"], ((0, batch_size - n), (0, 0), (0, 0), (0, 0)))
            ids = np.asarray(encode(params, images))[:n].astype(dtype)
            for caption, tokens in zip(batch["caption"], ids):
                writer.write(shards.serialize_tokens(caption, tokens))
            progress.update(n)
    writer.close({"grid_size": data.image_size // factor, "codebook_size": codebook,
                  "image_size": data.image_size, "tokenizer_workdir": config.tokenizer.workdir,
                  "source": data.source, "split": split, "tokens_dtype": np.dtype(dtype).name})
    return out
