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
"""
from __future__ import annotations

from typing import Any

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
from muse_jax.tasks import vqgan as vqgan_task


@flax.struct.dataclass
class BaseState:
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any


def build_model(config) -> MaskedTransformer:
    m = config.model
    return MaskedTransformer(codebook_size=m.codebook_size, grid=(m.grid_size, m.grid_size),
                             width=m.width, depth=m.depth, num_heads=m.num_heads,
                             mlp_dim=m.mlp_dim, dropout=m.dropout, dtype=jnp.dtype(m.dtype),
                             remat=m.remat)


class BaseTask:
    """What the generic train loop (muse_jax/train.py) needs for the base stage."""

    def __init__(self, config):
        self.config = config
        self.precomputed_text = bool(config.data.train_text_embeddings)
        self.precomputed_tokens = bool(config.data.train_tokens)
        self.uses_captions = not self.precomputed_text  # raw captions in the local batches
        self.model = build_model(config)
        self.num_tokens = config.model.grid_size ** 2
        self.lr = optimizers.learning_rate(config.optim, config.train.num_steps)
        self.tx = optimizers.create(config.optim, config.train.num_steps)
        self.text_encoder = None  # loaded by load_frozen: it needs files, a dry run does not
        self.tokenizer = None
        self._replicated = None  # set by load_frozen
        self._summarize = None  # the compiled sample-grid function, built at the first eval

    # ---------------------------------------------------------------- config
    def check_config(self) -> None:
        c = self.config
        if c.model.width % c.model.num_heads:
            raise ConfigError(f"model.num_heads {c.model.num_heads} does not divide model.width "
                              f"{c.model.width}")
        if not all(0.0 < r <= 1.0 for r in c.eval.mask_rates):
            raise ConfigError(f"eval.mask_rates must lie in (0, 1], got {tuple(c.eval.mask_rates)}")
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

    # ---------------------------------------------------------------- state
    def init_state(self, rng) -> BaseState:
        m = self.config.model
        tokens = jnp.zeros((1, self.num_tokens), jnp.int32)
        text = jnp.zeros((1, self.config.text.max_length, m.text_dim), jnp.float32)
        params = self.model.init(rng, tokens, text, jnp.ones(text.shape[:2], bool))["params"]
        return BaseState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=self.tx.init(params), ema_params=params)

    def load_frozen(self, mesh) -> dict:
        """What the steps need of the frozen models, placed on `mesh`.

        The tokenizer's weights (with precomputed tokens only for the sample grid, and only if
        `tokenizer.workdir` holds one); the text encoder's weights and the
        empty caption's ids, or with precomputed embeddings the empty caption's embedding.
        """
        c = self.config
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._replicated = replicated
        frozen = {}
        if not self.precomputed_tokens:
            self._load_tokenizer(frozen)
        else:
            self._check_tokens()
            if c.eval.num_samples:  # only the sample grid needs the tokenizer then: to decode
                try:
                    self._load_tokenizer(frozen)
                except UserError as e:
                    logging.warning("no sample grids (eval.num_samples=%d): %s",
                                    c.eval.num_samples, e)
        if self.precomputed_text:
            empty, empty_mask = self._check_embeddings().empty_caption()
            frozen["empty_emb"] = parallel.put(empty[None].astype(np.float32), replicated)
            frozen["empty_mask"] = parallel.put(empty_mask[None], replicated)
            return frozen
        from muse_jax.text import create_encoder

        self.text_encoder = create_encoder(c.text, mesh)
        if self.text_encoder.dim != c.model.text_dim:
            raise ConfigError(f"model.text_dim {c.model.text_dim} differs from the text "
                              f"encoder's width {self.text_encoder.dim}")
        empty_ids, empty_mask = self.text_encoder.tokenize([""])
        return {**frozen, "text": self.text_encoder.params,
                "empty_ids": parallel.put(empty_ids, replicated),
                "empty_mask": parallel.put(empty_mask, replicated)}

    def _load_tokenizer(self, frozen: dict) -> None:
        """Sets `self.tokenizer` and `frozen["tokenizer"]` from `tokenizer.workdir`."""
        c = self.config
        model, params, vq_config = vqgan_task.load_tokenizer(c.tokenizer.workdir)
        factor = model.downsample_factor
        if vq_config.model.codebook_size != c.model.codebook_size:
            raise ConfigError(f"model.codebook_size {c.model.codebook_size} differs from the "
                              f"tokenizer's {vq_config.model.codebook_size} ({c.tokenizer.workdir})")
        if c.data.image_size // factor != c.model.grid_size or c.data.image_size % factor:
            raise ConfigError(f"model.grid_size {c.model.grid_size} does not match data."
                              f"image_size {c.data.image_size} / the tokenizer's factor {factor}")
        self.tokenizer = model
        frozen["tokenizer"] = parallel.put(params, self._replicated)

    def _check_tokens(self) -> None:
        """Precomputed tokens must fit the model; sampling decodes with `tokenizer.workdir`."""
        from muse_jax.data.shards import TokenRecords

        c = self.config
        for directory in (c.data.train_tokens, c.data.eval_tokens):
            records = TokenRecords(directory)
            if records.grid_size != c.model.grid_size:
                raise ConfigError(f"{directory} holds {records.grid_size}x{records.grid_size} "
                                  f"token grids, model.grid_size is {c.model.grid_size}")
            if records.codebook_size != c.model.codebook_size:
                raise ConfigError(f"{directory} holds tokens of a {records.codebook_size}-code "
                                  f"tokenizer, model.codebook_size is {c.model.codebook_size}")
            if records.metadata["tokenizer_workdir"] != c.tokenizer.workdir:
                logging.warning("%s was tokenised by %s, but tokenizer.workdir (which sampling "
                                "decodes with) is %s", directory,
                                records.metadata["tokenizer_workdir"], c.tokenizer.workdir)

    def _check_embeddings(self):
        """Precomputed embeddings must fit the model (sampling encodes prompts with `text`).

        Returns the train split's records, whose empty caption the steps use.
        """
        from muse_jax.data.shards import EmbeddingRecords

        c = self.config
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
            if (encoder["encoder"], encoder["path"]) != (c.text.encoder, c.text.path):
                logging.warning("%s was encoded by %s %r, but config.text (which sampling "
                                "encodes prompts with) names %s %r", directory, encoder["encoder"],
                                encoder["path"], c.text.encoder, c.text.path)
        return train

    # ---------------------------------------------------------------- inputs
    def prepare_batch(self, local: dict) -> dict:
        batch = {k: local[k] for k in ("image", "tokens", "text_emb", "text_mask") if k in local}
        if not self.precomputed_text:
            batch["text_ids"], batch["text_mask"] = self.text_encoder.tokenize(
                [str(c) for c in local["caption"]])
        return batch

    def _inputs(self, batch, frozen):
        """Token ids [B, N] and text (emb [B,L,D], mask [B,L]), precomputed or from frozen models."""
        if "tokens" in batch:
            ids = batch["tokens"].astype(jnp.int32)
        else:
            ids = self.tokenizer.apply({"params": frozen["tokenizer"]}, batch["image"],
                                       method=self.tokenizer.encode)
        tokens = ids.reshape(ids.shape[0], -1)
        if "text_emb" in batch:
            emb, empty = batch["text_emb"], frozen["empty_emb"]
        else:
            emb = self.text_encoder.apply(frozen["text"], batch["text_ids"], batch["text_mask"])
            empty = self.text_encoder.apply(frozen["text"], frozen["empty_ids"],
                                            frozen["empty_mask"])
        return (jax.lax.stop_gradient(tokens), emb.astype(jnp.float32), batch["text_mask"],
                empty.astype(jnp.float32), frozen["empty_mask"])

    def _extra_inputs(self, batch, frozen) -> dict:
        """Per-example conditioning besides the text, as arrays with a leading batch axis (the
        SR stage's low-res tokens); the base stage has none."""
        return {}

    def _logits(self, params, part: dict, **kwargs):
        """The model on `part` ("inputs", "emb", "text_mask" and the `_extra_inputs`)."""
        return self.model.apply({"params": params}, part["inputs"], part["emb"], part["text_mask"],
                                **kwargs)

    # ---------------------------------------------------------------- steps
    def train_step(self, state: BaseState, batch, rng, frozen) -> tuple[BaseState, dict]:
        c = self.config
        tokens, emb, text_mask, empty, empty_mask = self._inputs(batch, frozen)
        rng_rate, rng_mask, rng_drop, rng_dropout = jax.random.split(rng, 4)
        batch_size = tokens.shape[0]
        rate = masking.sample_mask_rate(rng_rate, (batch_size,))
        mask = masking.random_mask(rng_mask, batch_size, self.num_tokens, rate)
        emb, text_mask = masking.drop_captions(rng_drop, emb, text_mask, empty[0], empty_mask[0],
                                               c.masking.caption_dropout)
        inputs = jnp.where(mask, c.model.codebook_size, tokens)  # [MASK] id = codebook_size

        def loss_fn(params, part, key):
            logits = self._logits(params, part, deterministic=False, rngs={"dropout": key})
            return masking.masked_cross_entropy(logits, part["tokens"], part["mask"],
                                                c.masking.label_smoothing)

        parts = {"inputs": inputs, "emb": emb, "text_mask": text_mask, "tokens": tokens,
                 "mask": mask, **self._extra_inputs(batch, frozen)}
        (loss, aux), grads = optimizers.accumulate_gradients(
            loss_fn, state.params, parts, rng_dropout, c.optim.accum_steps)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # TF-style EMA warm-up: an average over the steps so far while they are few.
        decay = jnp.minimum(c.optim.ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": self.lr(state.step),
                   "mask_rate": jnp.mean(rate), **aux}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             ema_params=ema), metrics

    def eval_step(self, state: BaseState, batch, rng, frozen) -> dict:
        """Sums at each fixed mask rate (EMA weights, full captions), plus token counts."""
        c = self.config
        tokens, emb, text_mask, _, _ = self._inputs(batch, frozen)
        extra = self._extra_inputs(batch, frozen)
        batch_size = tokens.shape[0]
        out = {"count": jnp.asarray(batch_size, jnp.float32),
               "token_counts": jnp.bincount(tokens.reshape(-1), length=c.model.codebook_size)}
        for i, r in enumerate(c.eval.mask_rates):
            rate = jnp.full((batch_size,), r, jnp.float32)
            mask = masking.random_mask(jax.random.fold_in(rng, i), batch_size, self.num_tokens, rate)
            inputs = jnp.where(mask, c.model.codebook_size, tokens)
            logits = self._logits(state.ema_params, {"inputs": inputs, "emb": emb,
                                                     "text_mask": text_mask, **extra})
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

    def summary_images(self, state, batch, frozen) -> dict[str, np.ndarray]:
        """`samples`: the first `eval.num_samples` eval images as the tokenizer renders them, above
        images generated from their captions (EMA weights, `eval.sample_steps` steps, guidance
        rising to 4): what the model makes of held-out prompts, at every evaluation."""
        n = min(self.config.eval.num_samples, self.config.data.eval_batch_size)
        if not n or self.tokenizer is None:
            return {}
        if self._summarize is None:
            generate = sampling.make_generate(
                self.model, sampling.SamplingOptions(steps=self.config.eval.sample_steps))

            def summarize(params, batch, frozen):
                batch = jax.tree.map(lambda x: x[:n], batch)
                tokens, emb, text_mask, empty, empty_mask = self._inputs(batch, frozen)
                extra = self._extra_inputs(batch, frozen)
                canvas = jnp.full(tokens.shape, self.model.mask_id, jnp.int32)
                generated = generate(params, emb, text_mask, empty, empty_mask,
                                     jax.random.key(0), canvas, *extra.values())
                grid, vq = self.config.model.grid_size, frozen["tokenizer"]
                return [render_tokens(self.tokenizer, vq, tokens, grid),
                        *self._condition_images(extra, frozen),
                        render_tokens(self.tokenizer, vq, generated, grid)]

            # Replicated, so that every process can read the grid in a multi-host run.
            self._summarize = jax.jit(summarize, out_shardings=self._replicated)
        rows = jax.device_get(self._summarize(state.ema_params, batch, frozen))
        return {"samples": metrics.image_grid(*rows)}

    def _condition_images(self, extra: dict, frozen) -> list:
        """Rows of the sample grid showing the `_extra_inputs` (the SR stage's low-res images)."""
        return []


def render_tokens(tokenizer, params, tokens, grid: int):
    """Images [B,H,W,3] of token ids [B, grid * grid] by `tokenizer`'s decoder (traceable)."""
    ids = tokens.reshape(tokens.shape[0], grid, grid)
    return tokenizer.apply({"params": params}, ids, method=tokenizer.decode)
