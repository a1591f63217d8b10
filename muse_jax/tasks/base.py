"""Base masked-transformer stage (Muse 2.2): predict masked VQGAN tokens from the rest + text.

Each step tokenises the images with the frozen VQGAN and the captions with the frozen text
encoder (both run inside the compiled step, their weights passed in as `frozen`), masks a
fraction r ~ arccos distribution of each image's tokens, replaces 10% of captions by the
empty caption's embedding (classifier-free guidance), and trains on the cross-entropy of the
masked positions only. An EMA of the parameters is kept for evaluation and sampling.

At paper scale T5-XXL and the VQGAN cost much of a step for outputs that never change, so
either can be precomputed once (`data.*_text_embeddings`: muse_jax.text.precompute;
`data.*_tokens`: muse_jax.data.precompute_tokens). Batches then carry `text_emb`/`text_mask`
or `tokens`, and the frozen model is neither loaded nor run; the empty caption comes from the
embedding records. Precomputed tokens are of centre crops, so such runs have no random crop.

The super-resolution stage (tasks/sr.py) trains the same way with one more input, so the parts
are separate objects it builds too: `load_frozen` (tokenizer and text encoder), a
`MaskedTokenTraining` (masking, loss, EMA, evaluation at fixed mask rates) and
`MaskedTokenSteps`, which joins them with a `Condition` (the inputs besides the text).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, NamedTuple, Protocol

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from muse_jax import masking, metrics, optimizers, parallel, sampling
from muse_jax.config import ConfigError
from muse_jax.errors import UserError
from muse_jax.models.transformer import MaskedTransformer
from muse_jax.tasks import finetune
from muse_jax.tasks import vqgan as vqgan_task


@flax.struct.dataclass
class BaseState:
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any


def build_model(config) -> MaskedTransformer:
    m = config.model
    if m.get("kind", "muse") == "uvit":
        import json

        from muse_jax.models import uvit
        return uvit.UVit2D(uvit.UVitConfig.from_diffusers(json.loads(m.diffusers)),
                           dtype=jnp.dtype(m.dtype),
                           micro_conds=tuple(float(x) for x in m.micro_conditioning))
    return MaskedTransformer(codebook_size=m.codebook_size, grid=(m.grid_size, m.grid_size),
                             width=m.width, depth=m.depth, num_heads=m.num_heads,
                             mlp_dim=m.mlp_dim, dropout=m.dropout, dtype=jnp.dtype(m.dtype),
                             remat=m.remat, text_depth=m.get("text_depth", 0),
                             text_length=config.text.max_length,
                             pos_init=m.get("pos_init", "normal"),
                             patch=m.get("patch_size", 1))


def check_config(c) -> None:
    """The settings of a masked token stage that need no files."""
    if c.model.get("kind", "muse") == "muse" and c.model.grid_size % c.model.get("patch_size", 1):
        raise ConfigError(f"model.patch_size {c.model.patch_size} does not divide model.grid_size "
                          f"{c.model.grid_size}")
    if c.model.width % c.model.num_heads:
        raise ConfigError(f"model.num_heads {c.model.num_heads} does not divide model.width "
                          f"{c.model.width}")
    if not all(0.0 < r <= 1.0 for r in c.eval.mask_rates):
        raise ConfigError(f"eval.mask_rates must lie in (0, 1], got {tuple(c.eval.mask_rates)}")
    if not 0.0 <= c.masking.text_token_dropout < 1.0:
        raise ConfigError(f"masking.text_token_dropout must lie in [0, 1), got "
                          f"{c.masking.text_token_dropout}")
    if not 0.0 <= c.masking.caption_dropout < 1.0:
        raise ConfigError(f"masking.caption_dropout must lie in [0, 1), got "
                          f"{c.masking.caption_dropout}")
    if c.data.eval_size % c.data.eval_batch_size:
        raise ConfigError(f"data.eval_size {c.data.eval_size} is not a multiple of "
                          f"data.eval_batch_size {c.data.eval_batch_size}")
    for kind in ("text_embeddings", "tokens"):
        train, eval_ = c.data[f"train_{kind}"], c.data[f"eval_{kind}"]
        if bool(train) != bool(eval_):
            raise ConfigError(f"data.train_{kind} and data.eval_{kind} must both name "
                              f"precomputed directories or both be empty, got {train!r} "
                              f"and {eval_!r}")
    finetune.check_config(c)


# -------------------------------------------------------------------- frozen models
class Inputs(NamedTuple):
    """What a step reads of a batch: token ids [B,N], the text (emb [B,L,D] f32, mask [B,L]),
    and the empty caption's embedding and mask [1,L,...] (caption dropout; guidance)."""
    tokens: jax.Array
    emb: jax.Array
    text_mask: jax.Array
    empty_emb: jax.Array
    empty_mask: jax.Array


@dataclasses.dataclass(frozen=True)
class FrozenModels:
    """The tokenizer and text encoder of a masked token stage and their placed `weights`.

    `text_encoder` is None when the batches carry precomputed embeddings (the weights then hold
    the empty caption's embedding), `tokenizer` when they carry precomputed tokens and
    `tokenizer.workdir` holds no tokenizer to render the sample grid with.
    """
    tokenizer: Any
    text_encoder: Any
    weights: dict

    def prepare_batch(self, local: dict) -> dict:
        batch = {k: local[k] for k in ("image", "tokens", "text_emb", "text_mask") if k in local}
        if self.text_encoder is not None:
            batch["text_ids"], batch["text_mask"] = self.text_encoder.tokenize(
                [str(c) for c in local["caption"]])
        return batch

    def inputs(self, batch: dict, weights: dict) -> Inputs:
        """The tokens and text of `batch`, precomputed or from the frozen models (traceable)."""
        if "tokens" in batch:
            ids = batch["tokens"].astype(jnp.int32)
        else:
            ids = self.tokenizer.apply({"params": weights["tokenizer"]}, batch["image"],
                                       method=self.tokenizer.encode)
        tokens = ids.reshape(ids.shape[0], -1)
        if "text_emb" in batch:
            emb, empty = batch["text_emb"], weights["empty_emb"]
        else:
            emb = self.text_encoder.apply(weights["text"], batch["text_ids"], batch["text_mask"])
            empty = self.text_encoder.apply(weights["text"], weights["empty_ids"],
                                            weights["empty_mask"])
        return Inputs(jax.lax.stop_gradient(tokens), emb.astype(jnp.float32), batch["text_mask"],
                      empty.astype(jnp.float32), weights["empty_mask"])


def load_frozen(config, mesh) -> FrozenModels:
    """Reads the frozen models `config` needs and places their weights on `mesh` (replicated,
    the text encoder by its logical axes): the tokenizer unless the tokens are precomputed
    (then only for the sample grid, and only if `tokenizer.workdir` holds one), the text
    encoder and the empty caption's ids unless the embeddings are precomputed (then the empty
    caption's embedding)."""
    c = config
    replicated = parallel.replicated(mesh)
    tokenizer, weights = None, {}
    if not c.data.train_tokens:
        tokenizer, weights["tokenizer"] = _load_tokenizer(c, replicated)
    else:
        _check_tokens(c)
        if c.eval.num_samples:  # only the sample grid needs the tokenizer then: to decode
            try:
                tokenizer, weights["tokenizer"] = _load_tokenizer(c, replicated)
            except UserError as e:
                logging.warning("no sample grids (eval.num_samples=%d): %s", c.eval.num_samples, e)
    if c.data.train_text_embeddings:
        empty, empty_mask = _check_embeddings(c).empty_caption()
        weights["empty_emb"] = parallel.put(empty[None].astype(np.float32), replicated)
        weights["empty_mask"] = parallel.put(empty_mask[None], replicated)
        return FrozenModels(tokenizer, None, weights)
    from muse_jax.text import create_encoder

    encoder = create_encoder(c.text, mesh)
    if encoder.dim != c.model.text_dim:
        raise ConfigError(f"model.text_dim {c.model.text_dim} differs from the text "
                          f"encoder's width {encoder.dim}")
    empty_ids, empty_mask = encoder.tokenize([""])
    weights.update(text=encoder.params, empty_ids=parallel.put(empty_ids, replicated),
                   empty_mask=parallel.put(empty_mask, replicated))
    return FrozenModels(tokenizer, encoder, weights)


def _load_tokenizer(c, replicated):
    """(model, placed params) of `tokenizer.workdir`, checked against the model's grid."""
    model, params, vq_config = vqgan_task.load_tokenizer(c.tokenizer.workdir)
    factor = model.downsample_factor
    if vq_config.model.codebook_size != c.model.codebook_size:
        raise ConfigError(f"model.codebook_size {c.model.codebook_size} differs from the "
                          f"tokenizer's {vq_config.model.codebook_size} ({c.tokenizer.workdir})")
    if c.data.image_size // factor != c.model.grid_size or c.data.image_size % factor:
        raise ConfigError(f"model.grid_size {c.model.grid_size} does not match data."
                          f"image_size {c.data.image_size} / the tokenizer's factor {factor}")
    return model, parallel.put(params, replicated)


def _check_tokens(c) -> None:
    """Precomputed tokens must fit the model; sampling decodes with `tokenizer.workdir`."""
    from muse_jax.data.shards import TokenRecords

    for directory in (c.data.train_tokens, c.data.eval_tokens):
        records = TokenRecords(directory)
        if records.grid_size != c.model.grid_size:
            raise ConfigError(f"{directory} holds {records.grid_size}x{records.grid_size} "
                              f"token grids, model.grid_size is {c.model.grid_size}")
        if records.codebook_size != c.model.codebook_size:
            raise ConfigError(f"{directory} holds tokens of a {records.codebook_size}-code "
                              f"tokenizer, model.codebook_size is {c.model.codebook_size}")
        written_by = records.metadata["tokenizer_workdir"]
        if written_by != c.tokenizer.workdir and ("://" in written_by or os.path.abspath(
                written_by) != os.path.abspath(c.tokenizer.workdir)):
            logging.warning("%s was tokenised by %s, but tokenizer.workdir (which sampling "
                            "decodes with) is %s", directory,
                            records.metadata["tokenizer_workdir"], c.tokenizer.workdir)


def _check_embeddings(c):
    """Precomputed embeddings must fit the model (sampling encodes prompts with `text`).

    Returns the train split's records, whose empty caption the steps use.
    """
    from muse_jax.data.shards import EmbeddingRecords

    directories = (c.data.train_text_embeddings, c.data.eval_text_embeddings)
    train, eval_ = (EmbeddingRecords(d) for d in directories)
    for directory, records in zip(directories, (train, eval_)):
        if records.dim != c.model.text_dim:
            raise ConfigError(f"{directory} holds {records.dim}-wide embeddings, "
                              f"model.text_dim is {c.model.text_dim}")
        if records.max_length != c.text.max_length:
            raise ConfigError(f"{directory} holds embeddings of {records.max_length} tokens, "
                              f"text.max_length is {c.text.max_length}")
        encoder = records.metadata["encoder"]
        layers = int(encoder.get("num_layers", 0)), int(c.text.get("num_layers", 0))
        if layers[0] != layers[1]:
            raise ConfigError(f"{directory} holds the states of text.num_layers={layers[0]}, "
                              f"but config.text.num_layers is {layers[1]}: sampling would read "
                              "other states than training; precompute them again")
        if (encoder["encoder"], encoder["path"]) != (c.text.encoder, c.text.path):
            logging.warning("%s was encoded by %s %r, but config.text (which sampling "
                            "encodes prompts with) names %s %r", directory, encoder["encoder"],
                            encoder["path"], c.text.encoder, c.text.path)
    return train


# -------------------------------------------------------------------- training
class MaskedTokenTraining:
    """How a masked token model trains and is evaluated, whatever conditions it besides the
    text: the model takes (tokens, text, text_mask, *conditioning); `conditioning` is a tuple
    of arrays with a leading batch axis, () for the base stage, and `example` one example of
    each (for init). Caption dropout replaces the text only, so guidance's unconditional
    branch keeps the other conditioning.

    What the state's `params` are is `weights`' (tasks/finetune.py): the model's weights, or
    LoRA adapters that the steps add to the pretrained weights in `frozen`.
    """

    def __init__(self, config, model, example: tuple = ()):
        self.config, self.model, self.example = config, model, example
        self.num_tokens = math.prod(model.grid)
        self.weights = finetune.create(config)
        self.lr = optimizers.learning_rate(config.optim, config.train.num_steps)
        self.tx = optimizers.create(config.optim, config.train.num_steps)

    def init_params(self, rng):
        """The model's freshly initialised params, boxed with their logical axes."""
        m = self.config.model
        tokens = jnp.zeros((1, self.num_tokens), jnp.int32)
        text = jnp.zeros((1, self.config.text.max_length, m.text_dim), jnp.float32)
        return self.model.init(rng, tokens, text, jnp.ones(text.shape[:2], bool),
                               *self.example)["params"]

    def init_state(self, rng) -> BaseState:
        """A fresh state: the trainable part (`weights.trainable`) of fresh params."""
        # The model's init keeps `rng` itself, so a run from scratch is the run it always was.
        params = self.weights.trainable(jax.random.fold_in(rng, 1), self.init_params(rng))
        return BaseState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=self.tx.init(params), ema_params=params)

    def load_weights(self, mesh) -> dict:
        """What `weights` needs in the steps' `frozen` (the pretrained weights of a LoRA run)."""
        return self.weights.load(
            lambda: parallel.abstract_sharded(self.init_params, mesh, jax.random.key(0)))

    def start_state(self, state: BaseState) -> BaseState:
        """A fresh run's state; a full fine-tune's params (and EMA) copied from `init_from`."""
        params = self.weights.start_params(state.params)
        if params is state.params:
            return state
        # The EMA gets buffers of its own: the train step donates the state, and one buffer
        # donated twice (as params and as EMA) crashes XLA.
        return state.replace(params=params, opt_state=self.tx.init(params),
                             ema_params=jax.tree.map(jnp.copy, params))

    def train_step(self, state: BaseState, inputs: Inputs, conditioning: tuple, rng,
                   frozen: dict) -> tuple[BaseState, dict]:
        c = self.config
        tokens = inputs.tokens
        rng_rate, rng_mask, rng_drop, rng_dropout = jax.random.split(rng, 4)
        batch_size = tokens.shape[0]
        rate = masking.sample_mask_rate(rng_rate, (batch_size,))
        mask = masking.random_mask(rng_mask, batch_size, self.num_tokens, rate)
        emb, text_mask = masking.drop_captions(rng_drop, inputs.emb, inputs.text_mask,
                                               inputs.empty_emb[0], inputs.empty_mask[0],
                                               c.masking.caption_dropout)
        # Its own stream, folded in so that runs without it draw what they always drew.
        text_mask = masking.drop_text_tokens(jax.random.fold_in(rng_drop, 1), text_mask,
                                             c.masking.text_token_dropout)
        masked_inputs = jnp.where(mask, self.model.mask_id, tokens)

        def loss_fn(params, part, key):
            key, key_adapters = jax.random.split(key)
            weights = self.weights.train_weights(params, frozen, key_adapters)
            logits = self.model.apply({"params": weights}, part["inputs"], part["emb"],
                                      part["text_mask"], *part["conditioning"],
                                      deterministic=False, rngs={"dropout": key})
            return masking.masked_cross_entropy(logits, part["tokens"], part["mask"],
                                                c.masking.label_smoothing)

        parts = {"inputs": masked_inputs, "emb": emb, "text_mask": text_mask, "tokens": tokens,
                 "mask": mask, "conditioning": tuple(conditioning)}
        (loss, aux), grads = optimizers.accumulate_gradients(
            loss_fn, state.params, parts, rng_dropout, c.optim.accum_steps)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # TF-style EMA warm-up: an average over the steps so far while they are few.
        decay = jnp.minimum(c.optim.ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        out = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": self.lr(state.step),
               "mask_rate": jnp.mean(rate), **aux}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             ema_params=ema), out

    def eval_step(self, state: BaseState, inputs: Inputs, conditioning: tuple, rng,
                  frozen: dict) -> dict:
        """Sums at each fixed mask rate (EMA weights, full captions), plus token counts."""
        c = self.config
        weights = self.weights.weights(state.ema_params, frozen)
        tokens = inputs.tokens
        batch_size = tokens.shape[0]
        out = {"count": jnp.asarray(batch_size, jnp.float32),
               "token_counts": jnp.bincount(tokens.reshape(-1), length=c.model.codebook_size)}
        for i, r in enumerate(c.eval.mask_rates):
            rate = jnp.full((batch_size,), r, jnp.float32)
            mask = masking.random_mask(jax.random.fold_in(rng, i), batch_size, self.num_tokens, rate)
            masked_inputs = jnp.where(mask, self.model.mask_id, tokens)
            logits = self.model.apply({"params": weights}, masked_inputs, inputs.emb,
                                      inputs.text_mask, *conditioning)
            loss, aux = masking.masked_cross_entropy(logits, tokens, mask)
            masked = jnp.sum(mask).astype(jnp.float32)
            key = f"{round(r * 100)}"
            out[f"loss_sum_{key}"] = loss * masked
            out[f"correct_{key}"] = aux["accuracy"] * masked
            out[f"masked_{key}"] = masked
        return out

    def summarize_eval(self, totals: dict) -> dict:
        counts = np.asarray(totals["token_counts"], np.float64)
        result = {"eval_mode_accuracy": float(counts.max() / max(counts.sum(), 1))}
        for r in self.config.eval.mask_rates:
            key = f"{round(r * 100)}"
            masked = max(float(totals[f"masked_{key}"]), 1.0)
            result[f"eval_accuracy_mask{key}"] = float(totals[f"correct_{key}"]) / masked
            result[f"eval_loss_mask{key}"] = float(totals[f"loss_sum_{key}"]) / masked
        return result


# -------------------------------------------------------------------- steps
class Condition(Protocol):
    """The inputs of a masked token model besides the text, and the frozen models behind them."""
    weights: dict  # placed; merged into the steps' `frozen`

    def inputs(self, batch: dict, frozen: dict) -> tuple:
        """Arrays with a leading batch axis, passed to the model after the text (traceable)."""

    def images(self, conditioning: tuple, frozen: dict) -> list:
        """Rows of the sample grid [B,H,W,3] that show `conditioning` (traceable)."""


class TextOnly:
    """The base stage's `Condition`: the text alone."""

    def __init__(self):
        self.weights = {}

    def inputs(self, batch, frozen) -> tuple:
        return ()

    def images(self, conditioning, frozen) -> list:
        return []


class MaskedTokenSteps:
    """`Steps` (tasks/protocol.py) of a masked token stage: `training` on the tokens and text of
    `models` and on `condition`'s inputs."""

    def __init__(self, training: MaskedTokenTraining, models: FrozenModels, mesh,
                 condition: Condition):
        self.training, self.models, self.condition = training, models, condition
        self.frozen = {**models.weights, **condition.weights, **training.load_weights(mesh)}
        c = training.config
        self._num_samples = min(c.eval.num_samples, c.data.eval_batch_size)
        self._generate = sampling.make_generate(
            training.model, sampling.SamplingOptions(steps=c.eval.sample_steps,
                                                     guidance=c.eval.guidance,
                                                     temperature=c.eval.temperature))
        # Replicated, so that every process can read the grid in a multi-host run.
        self._sample_grid = jax.jit(self._sample_rows, out_shardings=parallel.replicated(mesh))

    def start_state(self, state: BaseState) -> BaseState:
        return self.training.start_state(state)

    def prepare_batch(self, local: dict) -> dict:
        return self.models.prepare_batch(local)

    def train_step(self, state: BaseState, batch, rng, frozen) -> tuple[BaseState, dict]:
        return self.training.train_step(state, self.models.inputs(batch, frozen),
                                        self.condition.inputs(batch, frozen), rng, frozen)

    def eval_step(self, state: BaseState, batch, rng, frozen) -> dict:
        return self.training.eval_step(state, self.models.inputs(batch, frozen),
                                       self.condition.inputs(batch, frozen), rng, frozen)

    def summary_images(self, state: BaseState, batch, frozen) -> dict[str, np.ndarray]:
        """`samples`: the first `eval.num_samples` eval images as the tokenizer renders them
        (and the conditioning's rows), above images generated from their captions (EMA
        weights, `eval.sample_steps` steps, guidance rising to 4): what the model makes of
        held-out prompts, at every evaluation."""
        if not self._num_samples or self.models.tokenizer is None:
            return {}
        rows = jax.device_get(self._sample_grid(state.ema_params, batch, frozen))
        return {"samples": metrics.image_grid(*rows)}

    def _sample_rows(self, params, batch, frozen) -> list:
        batch = jax.tree.map(lambda x: x[:self._num_samples], batch)
        params = self.training.weights.weights(params, frozen)
        inputs = self.models.inputs(batch, frozen)
        conditioning = self.condition.inputs(batch, frozen)
        canvas = jnp.full(inputs.tokens.shape, self.training.model.mask_id, jnp.int32)
        generated = self._generate(params, inputs.emb, inputs.text_mask, inputs.empty_emb,
                                   inputs.empty_mask, jax.random.key(0), canvas, *conditioning)
        tokenizer, weights = self.models.tokenizer, frozen["tokenizer"]
        grid = self.training.config.model.grid_size
        return [render_tokens(tokenizer, weights, inputs.tokens, grid),
                *self.condition.images(conditioning, frozen),
                render_tokens(tokenizer, weights, generated, grid)]


class BaseTask:
    """The base stage's `Task` (tasks/protocol.py)."""

    def __init__(self, config):
        self.config = config
        self.model = build_model(config)
        self.training = MaskedTokenTraining(config, self.model)
        self.uses_captions = not config.data.train_text_embeddings  # raw captions in the batches

    def check_config(self) -> None:
        check_config(self.config)

    def init_state(self, rng) -> BaseState:
        return self.training.init_state(rng)

    def load(self, mesh) -> MaskedTokenSteps:
        return MaskedTokenSteps(self.training, load_frozen(self.config, mesh), mesh, TextOnly())

    def summarize_eval(self, totals: dict) -> dict:
        return self.training.summarize_eval(totals)


def render_tokens(tokenizer, params, tokens, grid: int):
    """Images [B,H,W,3] of token ids [B, grid * grid] by `tokenizer`'s decoder (traceable)."""
    ids = tokens.reshape(tokens.shape[0], grid, grid)
    return tokenizer.apply({"params": params}, ids, method=tokenizer.decode)
