"""A split's image tokens, computed once by the frozen VQGAN so base training need not run it.

Every example of the split (`config.data`, in source order) is resized and centre-cropped to
`data.image_size` as for evaluation, encoded by the tokenizer of `config.tokenizer.workdir` in
jit-compiled batches spread over this host's devices, each distinct image once
(`DistinctImages`: the demo's 10,000 training images, 6,599 distinct, tokenise in 28 s instead
of 37 on 2 cores, 2026-12-06), and written as record i of a `TokenRecords` directory (format:
muse_jax/data/shards.py). A base run reads the directory through `data.train_tokens` /
`data.eval_tokens`; the tokens are of centre crops, so training from them has no random crop.
One host only. The command: `python -m muse_jax.data.precompute_tokens`.
"""
from __future__ import annotations

import collections
import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from muse_jax.config import ConfigError
from muse_jax.data import shards, sources
from muse_jax.data.pipeline import READ_OPTIONS
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
    encoder = DistinctImages(lambda images: np.asarray(encode(params, images)).astype(dtype),
                             batch_size)
    ds = grain.MapDataset.source(source).map(
        Preprocess(data.image_size, random_crop=False, keep_caption=True))
    it = ds.batch(batch_size).to_iter_dataset(READ_OPTIONS)
    if data.num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
    with bar(total=len(source), unit="image", desc=f"tokenising {split}") as progress:
        for batch in it:
            for caption, image in zip(batch["caption"], batch["image"]):
                for record in encoder.add(caption, image):
                    writer.write(shards.serialize_tokens(*record))
            progress.update(len(batch["image"]))
        for record in encoder.flush():
            writer.write(shards.serialize_tokens(*record))
    writer.close({"grid_size": data.image_size // factor, "codebook_size": codebook,
                  "image_size": data.image_size, "tokenizer_workdir": config.tokenizer.workdir,
                  "source": data.source, "split": split, "tokens_dtype": np.dtype(dtype).name})
    return out


class DistinctImages:
    """Encodes each distinct image once, in full batches of `batch_size` (the last one padded:
    one compiled shape), and hands back (caption, tokens) in the order they were added.

    Datasets repeat images: the demo's 10,000 shapes scenes hold 6,599 distinct ones, and
    COCO-style sets give each image several captions. Images are told apart by a digest of
    their pixels; the tokens of the latest `remember` distinct images are kept for repeats
    (16,384 of 64x64 uint16 grids, 512 px images, hold 128 MiB).
    """

    def __init__(self, encode: Callable[[np.ndarray], np.ndarray], batch_size: int,
                 remember: int = 16384):
        self._encode, self._batch_size, self._remember = encode, batch_size, remember
        self._known: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()
        self._waiting: dict[bytes, np.ndarray] = {}  # digest -> image, to encode next
        self._order: list[tuple[str, bytes]] = []  # (caption, digest) not yet handed back

    def add(self, caption: str, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The records that are ready now (all of them once a batch was encoded)."""
        hasher = hashlib.blake2b(str(image.shape).encode(), digest_size=16)
        hasher.update(np.ascontiguousarray(image))  # the pixels, read in place
        digest = hasher.digest()
        self._order.append((caption, digest))
        if digest in self._known:
            self._known.move_to_end(digest)
        elif digest not in self._waiting:
            self._waiting[digest] = image
            if len(self._waiting) == self._batch_size:
                return self._encode_waiting()
        return []

    def flush(self) -> list[tuple[str, np.ndarray]]:
        """Every record not yet handed back."""
        return self._encode_waiting() if self._waiting else self._ready()

    def _encode_waiting(self) -> list[tuple[str, np.ndarray]]:
        images = np.stack(list(self._waiting.values()))
        n = len(images)
        padded = np.pad(images, ((0, self._batch_size - n),) + ((0, 0),) * (images.ndim - 1))
        # Copies: a view would keep its whole batch alive for as long as the row is known.
        self._known.update(zip(self._waiting, (row.copy() for row in self._encode(padded)[:n])))
        self._waiting = {}
        return self._ready()

    def _ready(self) -> list[tuple[str, np.ndarray]]:
        """Everything in `_order` (its images are all known once nothing waits), then forgets
        the oldest distinct images beyond `remember`."""
        ready = [(caption, self._known[digest]) for caption, digest in self._order]
        self._order = []
        while len(self._known) > self._remember:
            self._known.popitem(last=False)
        return ready
