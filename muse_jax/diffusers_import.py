"""A local diffusers aMUSEd folder (`AmusedPipeline`) -> muse_jax run directories.

    python -m muse_jax.import_diffusers --src=/models/amused-256 --workdir=runs/amused-256
    python -m muse_jax.sample --workdir=runs/amused-256 --prompt="a cat"  # as AmusedPipeline

The folder is what `huggingface-cli download amused/amused-256` leaves (nothing is fetched
here): `model_index.json`, `transformer/` (UVit2DModel), `vqvae/` (VQModel), `text_encoder/`
(CLIPTextModelWithProjection), `tokenizer/` (CLIPTokenizer), `scheduler/`; weights as
safetensors, float32 or fp16 (`*.fp16.safetensors`), whole or sharded (`*.index.json`).

Two runs are written, so that sampling, editing and evaluation open them like any trained
run: `WORKDIR` (a base-stage run: config.json with `model.kind = "uvit"`, the text block
naming the CLIP folders, and an Orbax checkpoint) and `WORKDIR/tokenizer` (a vqgan-stage run
with `model.kind = "diffusers"`). The text encoder is read from the source folder when the run
opens, as a T5 checkpoint is; the checkpoints hold `step`, `params` and `ema_params` (the same
weights) in the layout training's state uses, without optimiser moments.

Every expected file is checked before anything is read, and a tensor that is missing or has
the wrong shape stops the import with one line naming it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax import config as config_lib, runs
from muse_jax.errors import CheckpointError
from muse_jax.models import uvit, vq_diffusers
from muse_jax.text import clip as clip_text, hf_import

COMPONENTS = {"transformer": "UVit2DModel", "vqvae": "VQModel",
              "text_encoder": "CLIPTextModelWithProjection"}
EXPECTED = ("model_index.json, transformer/ and vqvae/ (config.json + diffusion_pytorch_model"
            "[.fp16].safetensors or its .index.json and shards), text_encoder/ (config.json + "
            "model[.fp16].safetensors), tokenizer/ (vocab.json + merges.txt or tokenizer.json)")


def check_folder(src: Path) -> None:
    """Raises CheckpointError naming every missing file of an aMUSEd folder."""
    if not src.is_dir():
        raise CheckpointError(f"diffusers folder '{src}' does not exist; expected {EXPECTED}")
    missing = [] if (src / "model_index.json").is_file() else ["model_index.json"]
    for part, candidates in (("transformer", hf_import.DIFFUSERS_FILES),
                             ("vqvae", hf_import.DIFFUSERS_FILES),
                             ("text_encoder", hf_import.TRANSFORMERS_FILES)):
        if not (src / part / "config.json").is_file():
            missing.append(f"{part}/config.json")
        missing += [f"{part}/{f}" for f in hf_import.missing_weights(src / part, candidates)]
    if not any((src / "tokenizer" / f).is_file() for f in hf_import.TOKENIZER_FILES):
        missing.append("tokenizer/vocab.json (+ merges.txt) or tokenizer/tokenizer.json")
    if missing:
        raise CheckpointError(f"diffusers folder '{src}' is incomplete: missing "
                              f"{', '.join(missing)}; expected {EXPECTED}")
    for part, cls in COMPONENTS.items():
        name = hf_import.read_config(src / part).get("_class_name") or \
            hf_import.read_config(src / part).get("architectures", [cls])[0]
        if name != cls:
            raise CheckpointError(f"{src / part}/config.json describes a {name}, expected a {cls}")


def _checked(params: dict, abstract: dict, where: str) -> dict:
    """`params` as float32 numpy, checked leaf by leaf against the model's own shapes."""
    flat_abstract = {jax.tree_util.keystr(k): v
                     for k, v in jax.tree_util.tree_leaves_with_path(nn.unbox(abstract))}
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    for key in sorted(set(flat_abstract) | set(flat)):
        if key not in flat or key not in flat_abstract:
            raise CheckpointError(f"{where}: parameter {key} is {'missing' if key not in flat else 'unexpected'}")
        if tuple(flat[key].shape) != tuple(flat_abstract[key].shape):
            raise CheckpointError(f"{where}: parameter {key} has shape {tuple(flat[key].shape)}, "
                                  f"the config implies {tuple(flat_abstract[key].shape)}")
    return jax.tree.map(lambda x: np.asarray(x, np.float32), params)


def _getter(path: Path, candidates):
    weights = hf_import.Weights(path, candidates)
    return lambda name: weights.get(name, np.float32)


def vq_run_config(hf: dict, vq: vq_diffusers.VQModelConfig, image_size: int):
    c = config_lib.reference("vqgan")
    with c.unlocked():
        c.model.kind, c.model.diffusers = "diffusers", json.dumps(hf)
        c.model.codebook_size, c.model.code_dim = vq.num_vq_embeddings, vq.code_dim
        c.model.dtype = "float32"  # force_upcast: aMUSEd's VQ-GAN decodes in float32
        c.data.image_size = image_size
    return c


def base_run_config(hf: dict, net: uvit.UVitConfig, src: Path, tokenizer_workdir: str,
                    image_size: int, text: clip_text.CLIPTextConfig, max_length: int):
    c = config_lib.reference("base")
    with c.unlocked():
        c.model.kind, c.model.diffusers = "uvit", json.dumps(hf)
        c.model.micro_conditioning = (float(image_size), float(image_size), 0.0, 0.0, 6.0)
        c.model.codebook_size, c.model.grid_size = net.codebook_size, net.sample_size
        c.model.text_dim, c.model.dtype, c.model.dropout = text.hidden_size, "float32", 0.0
        c.model.remat = False
        c.tokenizer.workdir = tokenizer_workdir
        c.text.encoder, c.text.append_pooled = "clip", True
        c.text.path, c.text.tokenizer_path = str(src / "text_encoder"), str(src / "tokenizer")
        c.text.max_length, c.text.dtype = max_length, "float32"
        c.data.image_size = image_size
        c.eval.preset = "amused"  # `sample` and `evaluate` decode as AmusedPipeline does
    return c


def import_amused(src: str | os.PathLike, workdir: str | os.PathLike) -> Path:
    """Writes the two runs (see the module docstring); returns the base run's directory."""
    src, workdir = Path(src).expanduser().absolute(), Path(workdir).expanduser()
    check_folder(src)
    if (workdir / "config.json").exists():
        raise CheckpointError(f"{workdir} already holds a run (config.json); choose a new --workdir")
    transformer_hf = hf_import.read_config(src / "transformer")
    vq_hf = hf_import.read_config(src / "vqvae")
    try:
        net = uvit.UVitConfig.from_diffusers(transformer_hf)
        vq = vq_diffusers.VQModelConfig.from_diffusers(vq_hf)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{src}: {e}") from None
    text = clip_text.CLIPTextConfig.from_hf(hf_import.read_config(src / "text_encoder"))
    if text.hidden_size != net.encoder_hidden_size or text.projection_dim != net.cond_embed_dim:
        raise CheckpointError(f"{src}: the text encoder gives {text.hidden_size}-wide states and a "
                              f"{text.projection_dim}-wide pooled embedding; the transformer expects "
                              f"{net.encoder_hidden_size} and {net.cond_embed_dim}")
    # `sample_size` is the token grid, as AmusedPipeline's default height (sample_size x the
    # VQ-GAN's factor) reads it; aMUSEd-512's `downsample` halves it inside the U-ViT only.
    image_size = net.sample_size * 2 ** (len(vq.block_out_channels) - 1)

    vq_model = vq_diffusers.DiffusersVQ(vq)
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    abstract = jax.eval_shape(lambda: vq_model.init(jax.random.key(0), images)["params"])
    vq_params = _checked(vq_diffusers.params_from_diffusers(
        _getter(src / "vqvae", hf_import.DIFFUSERS_FILES), vq), abstract, f"{src / 'vqvae'}")
    runs.save_run(workdir / "tokenizer", vq_run_config(vq_hf, vq, image_size),
                  {"step": np.zeros((), np.int32), "params": vq_params})
    del vq_params

    params = _checked(uvit.params_from_diffusers(
        _getter(src / "transformer", hf_import.DIFFUSERS_FILES), net),
        uvit.params_shape(uvit.UVit2D(net)), f"{src / 'transformer'}")
    config = base_run_config(transformer_hf, net, src, str(workdir / "tokenizer"), image_size,
                             text, text.max_position_embeddings)
    runs.save_run(workdir, config, {"step": np.zeros((), np.int32), "params": params, "ema_params": params})
    return workdir
