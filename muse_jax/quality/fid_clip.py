"""Zero-shot FID and CLIP score of a text-to-image pipeline (Muse's Table 1 and 2 metrics).

Samples one image per prompt, `batch_size` prompts at a time; each batch's Inception pool3
features go into float64 statistics and its CLIP scores into a running sum, and the batch is
recorded (resume.py), so a 30k-sample run can be stopped and resumed. The reference
statistics (the real images' features) are computed once in the same way and kept under the
output directory beside the samples'. The sample of prompt i is drawn with the key
fold_in(seed, i's batch start) whatever was resumed, so every run of the same settings scores
the same images.

FID = Fréchet distance of the two Gaussians (frechet.py); CLIP score = mean over samples of
100 * max(cos(image embedding, prompt embedding), 0), the community's definition (Hessel et
al., arXiv 2104.08718, with w = 100 as torchmetrics uses it); Muse reports it / 100 (0.32).
"""
from __future__ import annotations

import itertools
import math
import time
from typing import Callable, Iterator

import jax
import numpy as np

from muse_jax.errors import UserError
from muse_jax.models.inception import FEATURES
from muse_jax.progress import bar
from muse_jax.quality import frechet
from muse_jax.quality.resume import BatchProgress


def reference_stats(batches: Callable[[], Iterator[np.ndarray]], num_batches: int, inception,
                    out_dir: str, settings: dict) -> frechet.FeatureStats:
    """Inception statistics of `num_batches` batches of real images (in [-1, 1]) from
    `batches()`, resumable under `out_dir`."""
    progress = BatchProgress(out_dir, settings, {"reference": FEATURES})
    it = itertools.islice(batches(), progress.next_batch, num_batches)
    for b, images in enumerate(bar(it, desc="reference", unit="batch",
                                   initial=progress.next_batch, total=num_batches),
                               progress.next_batch):
        progress.stats["reference"].add(inception(images))
        progress.commit(b + 1)
    if progress.next_batch < num_batches:
        raise UserError(f"the reference data ran out after {progress.next_batch} batches; "
                        f"{num_batches} are needed (fewer --num_samples, or more images)")
    return progress.stats["reference"]


def sample_scores(pipe, prompts: list[str], options, seed: int, batch_size: int, inception,
                  clip_score: Callable, out_dir: str, settings: dict) -> dict:
    """Samples `prompts` batch by batch (resumable under `out_dir`): sample feature
    statistics, CLIP score, and the seconds per 1,000 samples of this session (sampling,
    decoding, Inception, CLIP and the record of the batch; the compiling first batch left out)."""
    from muse_jax.images import to_model, to_uint8

    progress = BatchProgress(out_dir, settings, {"samples": FEATURES})
    generate = pipe.generator(options)
    uncond = pipe.encode_text([""])
    num_batches = math.ceil(len(prompts) / batch_size)
    start_batch, seconds, sampled = progress.next_batch, 0.0, 0
    for b in bar(range(start_batch, num_batches), desc="samples", unit="batch",
                 initial=start_batch, total=num_batches):
        rows = slice(b * batch_size, (b + 1) * batch_size)
        batch = prompts[rows]
        t0 = time.perf_counter()
        rng = jax.random.fold_in(jax.random.key(seed), rows.start)
        tokens = generate(pipe.params, *pipe.encode_text(batch), *uncond, rng,
                          pipe.blank(len(batch)))
        # Scored as the 8-bit images a user would save, as the reference images are.
        images = to_model(to_uint8(pipe.decode(np.asarray(tokens))))
        progress.stats["samples"].add(inception(images))
        progress.add("clip_sum", np.sum(clip_score(images, batch)))
        progress.add("count", len(batch))
        progress.commit(b + 1)
        if b > start_batch:  # the first batch compiles
            seconds, sampled = seconds + time.perf_counter() - t0, sampled + len(batch)
    return {"stats": progress.stats["samples"],
            "clip_score": progress.sums["clip_sum"] / progress.sums["count"],
            "resumed_at_batch": start_batch,
            "seconds_per_1000_samples": 1000 * seconds / sampled if sampled else None}


def fid_clip(pipe, prompts: list[str], reference_batches: Callable[[], Iterator[np.ndarray]],
             inception, clip_score: Callable, options, seed: int, batch_size: int,
             out_dir: str, settings: dict) -> dict:
    """FID of the samples of `prompts` against the reference images, and their CLIP score."""
    if len(prompts) < 2:
        raise UserError(f"FID needs at least 2 prompts, got {len(prompts)}")
    num_batches = math.ceil(len(prompts) / batch_size)
    ref = reference_stats(reference_batches, num_batches, inception, f"{out_dir}/reference",
                          {k: settings[k] for k in settings if k.startswith("reference")}
                          | {"batch_size": batch_size, "num_batches": num_batches})
    samples = sample_scores(pipe, prompts, options, seed, batch_size, inception, clip_score,
                            f"{out_dir}/samples", settings)
    return {"fid": frechet.fid(samples.pop("stats"), ref), "num_reference": ref.count, **samples}
