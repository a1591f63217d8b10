"""The one text-encoder interface that training, sampling and precompute share.

`create_encoder(config.text)` loads a frozen encoder; `encode(list[str])` tokenizes with
the config's `max_length` (truncating, and saying so in the log), runs the jit-compiled
model in batches of at most `batch_size`, and returns float32 embeddings with padded
positions zeroed plus a bool mask. Batches are padded to a power of two, so a run compiles
a handful of shapes at most, whatever the number of prompts.

The params are a plain pytree that lives beside the train state, never inside it, so no
optimiser sees them; `apply` also stops gradients, so differentiating a loss through the
embeddings cannot update (or even compute gradients for) the encoder.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax import parallel
from muse_jax.config import ConfigError
from muse_jax.text import bert, clip, hf_import, t5

log = logging.getLogger(__name__)

ENCODERS = ("minilm", "t5", "clip")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_texts(texts: Any) -> list[str]:
    """The prompts as a list of str, or a TypeError that names the first bad index."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"encode expects a list of strings, got a single {type(texts).__name__}; "
                        "wrap it in a list")
    if not isinstance(texts, Sequence) and not isinstance(texts, np.ndarray):
        raise TypeError(f"encode expects a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"encode expects a list of strings, but texts[{i}] is "
                            f"{type(text).__name__}: {text!r:.60}")
    return [str(t) for t in texts]


class TextEncoder:
    """A frozen pretrained text encoder with its tokenizer; see the module docstring."""

    def __init__(self, name: str, module: nn.Module, params: Any, tokenizer, max_length: int,
                 batch_size: int, mesh: jax.sharding.Mesh | None = None,
                 append_pooled: bool = False):
        self.name, self.module, self.tokenizer = name, module, tokenizer
        self.append_pooled = append_pooled
        self.max_length, self.batch_size, self.mesh = max_length, batch_size, mesh
        self.params = params
        self._jit_apply = jax.jit(self.apply)
        self._jit_pooled = jax.jit(self.apply_with_pooled)

    @property
    def dim(self) -> int:
        c = self.module.config
        return c.d_model if isinstance(c, t5.T5Config) else c.hidden_size

    @property
    def dtype(self):
        return self.module.dtype

    @property
    def length(self) -> int:
        """Positions of an embedding: max_length, and one more with `append_pooled`."""
        return self.max_length + int(self.append_pooled)

    def apply(self, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Pure: ids [B,L] int32, mask [B,length] bool -> embeddings [B,length,D], zero where
        mask is False. With `append_pooled` (CLIP, for aMUSEd's U-ViT: models/uvit.py) the
        pooled projection, zero-padded to D, is the last position."""
        if self.append_pooled:
            hidden, pooled = self.apply_with_pooled(params, ids, mask)
            pooled = jnp.pad(pooled, ((0, 0), (0, hidden.shape[-1] - pooled.shape[-1])))
            hidden = jnp.concatenate([hidden, pooled[:, None].astype(hidden.dtype)], axis=1)
        else:
            hidden = self.module.apply({"params": params}, ids, mask)
        return jax.lax.stop_gradient(jnp.where(mask[..., None], hidden, 0).astype(hidden.dtype))

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """ids [B,max_length] int32 and mask [B,max_length] bool; logs how many were truncated."""
        texts = check_texts(texts)
        L = self.max_length
        if not texts:
            return np.zeros((0, L), np.int32), np.zeros((0, self.length), bool)
        enc = self.tokenizer(texts, max_length=L, truncation=True, padding="max_length",
                             return_attention_mask=True)
        ids = np.asarray(enc["input_ids"], np.int32)
        mask = np.asarray(enc["attention_mask"], bool)
        if self.name == "clip":  # causal tower, padding read as aMUSEd reads it: text/clip.py
            self._log_truncated(texts, mask)
            return ids, np.ones((len(ids), self.length), bool)
        self._log_truncated(texts, mask)
        return ids, mask

    def _log_truncated(self, texts: list[str], mask: np.ndarray) -> None:
        L = self.max_length
        full = np.flatnonzero(mask.all(axis=1))  # only these can have been truncated
        if full.size:
            lengths = [len(x) for x in self.tokenizer([texts[i] for i in full], verbose=False)["input_ids"]]
            cut = [(int(i), n) for i, n in zip(full, lengths) if n > L]
            if cut:
                i, n = max(cut, key=lambda c: c[1])
                log.warning("text encoder: %d of %d prompts truncated to max_length=%d tokens "
                            "(longest: prompt %d, %d tokens, %d characters)",
                            len(cut), len(texts), L, i, n, len(texts[i]))

    @property
    def pooled_dim(self) -> int:
        """Width of `encode_with_pooled`'s pooled embedding (CLIP's projection)."""
        self._check_pooled()
        return self.module.config.projection_dim

    def _check_pooled(self):
        if self.name != "clip":
            raise ConfigError(f"the {self.name} text encoder has no pooled embedding; "
                              "config.text.encoder 'clip' has one (aMUSEd conditions on it)")

    def apply_with_pooled(self, params: Any, ids: jax.Array, mask: jax.Array):
        """Pure, CLIP only: (token embeddings [B,L,D], pooled projection [B,P]), no gradients."""
        self._check_pooled()
        hidden, pooled = self.module.apply({"params": params}, ids, mask,
                                           method=clip.CLIPTextEncoder.with_pooled)
        return jax.lax.stop_gradient(hidden), jax.lax.stop_gradient(pooled)

    def encode_with_pooled(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CLIP only: `encode`'s (embeddings, mask) and the pooled projection [B,P] float32."""
        self._check_pooled()
        ids, mask = self.tokenize(texts)
        hidden, pooled = self._batched(self._jit_pooled, ids, mask,
                                       (self.max_length, self.dim), (self.pooled_dim,))
        return hidden, mask, pooled

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """embeddings [B,max_length,dim] float32 (zero at padding) and mask [B,max_length] bool."""
        ids, mask = self.tokenize(texts)
        (out,) = self._batched(lambda *a: (self._jit_apply(*a),), ids, mask, (self.length, self.dim))
        return out, mask

    def _batched(self, fn, ids: np.ndarray, mask: np.ndarray, *shapes) -> list[np.ndarray]:
        """`fn(params, ids, mask)` -> a tuple of arrays, run in batches padded to a power of two;
        the outputs (per-row `shapes`) as float32 numpy arrays, filler rows dropped.

        The prompts go in order of length, so that each batch is cut to about its own length
        (`_trim_padding`); each output row is written back to its prompt's place."""
        outs = [np.zeros((len(ids), *shape), np.float32) for shape in shapes]
        order = np.argsort(mask.sum(axis=1), kind="stable")
        for start in range(0, len(ids), self.batch_size):
            rows_of = order[start:start + self.batch_size]
            chunk_ids, chunk_mask = ids[rows_of], mask[rows_of]
            n = len(chunk_ids)
            rows = min(self.batch_size, 1 << (n - 1).bit_length())
            pad = ((0, rows - n), (0, 0))
            chunk_ids = np.pad(chunk_ids, pad, constant_values=self.tokenizer.pad_token_id)
            chunk_mask = np.pad(chunk_mask, pad)
            chunk_mask[n:, 0] = True  # filler rows attend to one token: finite, then dropped
            chunk_ids, chunk_mask = _trim_padding(chunk_ids, chunk_mask)
            if self.mesh is not None:
                chunk_ids, chunk_mask = self._place(chunk_ids), self._place(chunk_mask)
            for out, value in zip(outs, fn(self.params, chunk_ids, chunk_mask)):
                value = np.asarray(value[:n], np.float32)
                if value.ndim == 3:  # token states of the kept positions; the rest stay zero
                    out[rows_of, :value.shape[1]] = value
                else:
                    out[rows_of] = value
        return outs

    def _place(self, x: np.ndarray) -> jax.Array:
        sharding = parallel.batch_sharding(self.mesh)
        if len(x) % (self.mesh.shape["data"] * self.mesh.shape["fsdp"]):
            sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        return jax.device_put(x, sharding)


def _trim_padding(ids: np.ndarray, mask: np.ndarray, multiple: int = 8):
    """ids, mask [B, L] cut to the batch's longest caption rounded up to `multiple` positions.

    Padding is masked out of attention, so the kept positions' states are the same (to float
    rounding) and the cut ones would be zeroed anyway: `_batched` sorts prompts by length
    first, so that most batches are cut well short of max_length. A mask as long as the ids with
    True to the end (CLIP's, read as aMUSEd reads it) is left whole, as is a mask longer
    than the ids (`append_pooled`)."""
    if mask.shape[1] != ids.shape[1]:
        return ids, mask
    used = int(np.flatnonzero(mask.any(axis=0)).max(initial=0)) + 1
    keep = min(ids.shape[1], -(-used // multiple) * multiple)
    return ids[:, :keep], mask[:, :keep]


def _check_config(c) -> tuple[str, str, int, int, Any]:
    for key in ("encoder", "path", "max_length", "dtype", "batch_size"):
        if key not in c:
            raise ConfigError(f"config.text has no '{key}' key (see muse_jax/text/__init__.py)")
    if c.encoder not in ENCODERS:
        raise ConfigError(f"config.text.encoder must be one of {list(ENCODERS)}, got {c.encoder!r}")
    if c.dtype not in DTYPES:
        raise ConfigError(f"config.text.dtype must be one of {list(DTYPES)}, got {c.dtype!r}")
    if int(c.max_length) < 2:
        raise ConfigError(f"config.text.max_length must be >= 2 (room for special tokens), "
                          f"got {c.max_length}")
    if int(c.batch_size) < 1:
        raise ConfigError(f"config.text.batch_size must be >= 1, got {c.batch_size}")
    if c.encoder in ("t5", "clip") and not str(c.path).strip():
        raise ConfigError(f"config.text.path must name a local {c.encoder.upper()} checkpoint "
                          f"directory when config.text.encoder is '{c.encoder}'")
    if int(c.get("num_layers", 0)) and c.encoder != "minilm":
        raise ConfigError(f"config.text.num_layers picks a BERT layer's states; the "
                          f"{c.encoder} encoder reads a fixed layer (set it to 0)")
    if c.get("mean_with_embeddings", False) and c.encoder != "minilm":
        raise ConfigError(f"config.text.mean_with_embeddings averages a BERT's states with its "
                          f"embedding layer's; the {c.encoder} encoder has no such option")
    if c.get("append_pooled", False) and c.encoder != "clip":
        raise ConfigError(f"config.text.append_pooled needs config.text.encoder 'clip' (the "
                          f"one with a pooled projection), got {c.encoder!r}")
    return c.encoder, str(c.path), int(c.max_length), int(c.batch_size), DTYPES[c.dtype]


def create_encoder(text_config, mesh: jax.sharding.Mesh | None = None) -> TextEncoder:
    """Loads the frozen encoder that `text_config` (the `config.text` block) names.

    With a mesh, the params are placed by the logical-axis rules of `parallel` (T5-XXL's
    4.7B parameters spread over fsdp x tensor) and batches are split over data x fsdp.
    """
    name, path, max_length, batch_size, dtype = _check_config(text_config)
    what = {"minilm": "MiniLM/BERT", "t5": "T5", "clip": "CLIP text"}[name]
    tokenizer_path = str(text_config.get("tokenizer_path", "")).strip()
    path = hf_import.check_dir(path or bert.minilm_dir(), what, tokenizer=not tokenizer_path)
    if name != "t5":  # absolute positions: a fixed number of them
        positions = hf_import.read_config(path).get("max_position_embeddings", 512)
        if max_length > positions:
            raise ConfigError(f"config.text.max_length {max_length} exceeds this "
                              f"{'BERT' if name == 'minilm' else 'CLIP'}'s {positions} positions")
    if name == "minilm":
        module, params = bert.load(path, dtype, int(text_config.get("num_layers", 0)),
                                   bool(text_config.get("mean_with_embeddings", False)))
    else:
        module, params = {"t5": t5.load, "clip": clip.load}[name](path, dtype)
    if tokenizer_path:
        tokenizer = hf_import.load_tokenizer(hf_import.check_tokenizer_dir(tokenizer_path, what))
    else:
        tokenizer = hf_import.load_tokenizer(path)
    if mesh is None:
        params = jax.device_put(params)
    else:
        ids = jnp.zeros((1, max_length), jnp.int32)
        boxed = jax.eval_shape(module.init, jax.random.key(0), ids, jnp.ones((1, max_length), bool))
        shardings = parallel.logical_shardings(boxed["params"], mesh)
        params = parallel.put(params, shardings)  # multi-process safe, no collectives
    append = bool(text_config.get("append_pooled", False))
    widths = (module.config.projection_dim, module.config.hidden_size) if append else (0, 0)
    if widths[0] > widths[1]:
        raise ConfigError(f"config.text.append_pooled: the pooled projection ({widths[0]}) is "
                          f"wider than the token states ({widths[1]})")
    return TextEncoder(name, module, params, tokenizer, max_length, batch_size, mesh, append)
