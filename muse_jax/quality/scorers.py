"""The metric networks, loaded from local files (or randomly initialised, to test the path).

Each returns a `ShardedApply` (sharded.py) of images in [-1, 1], NHWC, float32:
  inception  -> pool3 features [B, 2048] for FID
  lpips      -> LPIPS distances [B] between two image batches (VGG16 or AlexNet)
  ClipScore  -> CLIP score [B] of images against prompts (a local Hugging Face CLIP directory)
Random weights make the numbers meaningless; they exist so the evaluation commands can be run
end to end on a machine that holds no pretrained files (tests, a first try on a new VM).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
import jax.numpy as jnp

from muse_jax.config import ConfigError
from muse_jax.models import inception as inception_model
from muse_jax.models import perceptual
from muse_jax.quality.sharded import ShardedApply

_INCEPTION = inception_model.FIDInceptionV3()


def _features(params, images):
    return _INCEPTION.apply({"params": params}, images)


def inception_from_file(path: str, mesh=None) -> ShardedApply:
    try:
        params = inception_model.load_params(path)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    return ShardedApply(_features, params, mesh)


def inception_random(seed: int, mesh=None) -> ShardedApply:
    """An Inception with random weights, drawn on the host: every convolution kernel normal
    with He's variance 2 / fan-in, every BatchNorm the identity (scale and variance 1, shift
    and mean 0). He's variance keeps activations at their scale through the 94 convolutions
    and ReLUs: the module's own lecun_normal (variance 1 / fan-in) shrank the pool3 features to
    ~1e-4, where any FID is ~0. Drawn with numpy: 1.4 s, where the module's initialisers,
    jitted, took 11.2-11.7 s of a process that scores a few images (a threefry hash for each of
    22 M weights; XLA's default flags, no compilation cache; 5.5 s with the tests' flags and a
    warm cache). 2026-12-06, 2-core AMD EPYC."""
    abstract = nn.unbox(jax.eval_shape(_INCEPTION.init, jax.random.key(0),
                                       jnp.zeros((1, 75, 75, 3)))["params"])
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            std = np.float32(np.sqrt(2 / math.prod(leaf.shape[:-1])))  # fan-in: HWI of HWIO
            return rng.standard_normal(leaf.shape, np.float32) * std
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    return ShardedApply(_features, jax.tree_util.tree_map_with_path(draw, abstract), mesh)


def lpips_from_file(path: str, net: str = "vgg", mesh=None) -> ShardedApply:
    try:
        weights = perceptual.load_weights(path, net)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    return ShardedApply(perceptual.lpips, weights, mesh)


class ClipScore:
    """images [B,H,W,3] in [-1, 1] and prompts -> CLIP score [B] = 100 * max(cos, 0).

    The cosine of CLIP's image and text embeddings (`CLIPModel`'s image_embeds / text_embeds),
    clipped at 0 and scaled by 100 as torchmetrics' CLIPScore and the papers that report it
    do. Images are resized to the tower's input size with antialiased bicubic interpolation
    (what CLIPImageProcessor's PIL resize does for square images; rounding differs slightly)
    and normalised with CLIP's mean and std.
    """

    def __init__(self, path: str, mesh=None):
        from pathlib import Path

        import ml_collections

        from muse_jax.models import clip
        from muse_jax.text import create_encoder, hf_import

        try:
            path = hf_import.check_dir(path, "CLIP")
            hf = hf_import.read_config(path)
            if hf.get("model_type") != "clip":
                raise hf_import.CheckpointError(
                    f"{path}/config.json has model_type {hf.get('model_type')!r}: the CLIP score "
                    f"needs a full CLIPModel checkpoint (both towers)")
            self.config = clip.CLIPVisionConfig.from_hf(hf)
            weights = hf_import.Weights(Path(path))
            params = clip.vision_params_from_hf(weights.get, self.config)
        except (hf_import.CheckpointError, ValueError) as e:
            raise ConfigError(str(e)) from None
        self.tower = clip.CLIPVisionTransformer(self.config)
        self.text = create_encoder(ml_collections.ConfigDict({
            "encoder": "clip", "path": str(path), "tokenizer_path": "", "dtype": "float32",
            "max_length": hf["text_config"].get("max_position_embeddings", 77), "batch_size": 64}))
        self.vision = ShardedApply(self._embed, params, mesh)

    def _embed(self, params, images):
        from muse_jax.models import clip

        size = self.config.image_size
        x = jax.image.resize(images, (images.shape[0], size, size, 3), "bicubic", antialias=True)
        x = ((x + 1) / 2 - jnp.asarray(clip.IMAGE_MEAN)) / jnp.asarray(clip.IMAGE_STD)
        return self.tower.apply({"params": params}, x)

    def __call__(self, images, prompts) -> np.ndarray:
        return 100.0 * np.maximum(self.cosine(images, prompts), 0.0)

    def cosine(self, images, prompts) -> np.ndarray:
        image = np.asarray(self.vision(np.asarray(images, np.float32)), np.float64)
        text = np.asarray(self.text.encode_with_pooled(list(prompts))[2], np.float64)
        return np.sum(image * text, axis=-1) / (np.linalg.norm(image, axis=-1) *
                                                np.linalg.norm(text, axis=-1))
