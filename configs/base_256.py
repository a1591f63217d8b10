"""Base masked transformer at paper scale: 16x16 tokens of a 256 px VQGAN, T5-XXL text (Muse 2.2).

  python -m muse_jax.train --config=configs/base_256.py --workdir=gs://bucket/base_256 \\
      --config.tokenizer.workdir=gs://bucket/vqgan_256 --config.text.path=/models/t5-v1_1-xxl
  ... --config=configs/base_256.py:3B     # Muse-3B: 48 layers, width 2048, MLP 8192, 32 heads

Every key of the `base` stage is named and commented here; other base configs load this one.
"""
import ml_collections

from muse_jax.config import load_common, parse_variant

common = load_common()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "base"  # which task muse_jax.train runs: vqgan | base | sr
    c.seed = 0  # init, data order and every per-step RNG derive from it (and the step)

    common.add_data(c)
    c.data.image_size = 256  # must be what the tokenizer was trained at
    c.data.batch_size = 512  # global batch (Muse: 512)
    c.data.eval_batch_size = 128  # global eval batch
    c.data.eval_size = 4096  # held-out examples per evaluation
    c.data.shapes_train_size = 0  # shapes source only: train examples (0: endless; needed to precompute)
    # Precomputed inputs (README, "The base stage"): directories written from a split's examples
    # in order; "" runs the frozen model in every step instead. Both splits or neither.
    c.data.train_text_embeddings = ""  # caption embeddings (muse_jax.text.precompute --split=train)
    c.data.eval_text_embeddings = ""  # the same for --split=eval
    c.data.train_tokens = ""  # image tokens (muse_jax.data.precompute_tokens; centre crops)
    c.data.eval_tokens = ""  # the same for --split=eval

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.workdir = ""  # workdir of a trained VQGAN run (config.json + checkpoints/)

    c.text = ml_collections.ConfigDict()
    c.text.encoder = "t5"  # minilm | t5 | clip (see muse_jax/text/__init__.py)
    c.text.path = ""  # local checkpoint directory (T5-XXL in the paper)
    c.text.tokenizer_path = ""  # tokenizer directory when not in path (aMUSEd's tokenizer/)
    c.text.append_pooled = False  # clip: pooled projection as one more position (aMUSEd's U-ViT)
    c.text.num_layers = 0  # minilm: states of its layer N, the first N run (0: the last layer)
    c.text.mean_with_embeddings = False  # minilm: those states averaged with layer 0's
    c.text.max_length = 64  # caption tokens; longer captions are truncated
    c.text.dtype = "bfloat16"  # encoder compute and weight dtype (frozen)
    c.text.batch_size = 256  # prompts per encoder call outside training (sampling, precompute)

    c.model = ml_collections.ConfigDict()
    # muse (models/transformer.py) | uvit (aMUSEd's U-ViT, models/uvit.py; written by
    # `python -m muse_jax.import_diffusers`, which fills model.diffusers and the text block)
    c.model.kind = "muse"
    c.model.diffusers = ""  # uvit: the UVit2DModel's diffusers config.json, as a JSON string
    c.model.micro_conditioning = (256.0, 256.0, 0.0, 0.0, 6.0)  # uvit: width, height, crop, aesthetic
    c.model.codebook_size = 8192  # must equal the tokenizer's (checked when it loads)
    c.model.grid_size = 16  # tokens per side: image_size / the tokenizer's downsampling factor
    c.model.text_dim = 4096  # text-embedding width (T5-XXL 4096, MiniLM 384; checked on load)
    c.model.width = 1280  # transformer width
    c.model.depth = 24  # transformer blocks
    c.model.num_heads = 16  # attention heads (width / heads = head width)
    c.model.mlp_dim = 5120  # feed-forward hidden width
    c.model.dropout = 0.1  # dropout in attention outputs and MLPs during training
    c.model.dtype = "bfloat16"  # compute dtype; parameters stay float32
    c.model.remat = True  # recompute each block's activations in the backward pass
    # Not in Muse (T5-XXL feeds cross-attention directly): trainable self-attention blocks over
    # the projected text before cross-attention, for small text encoders (transformer.TextBlocks)
    c.model.text_depth = 0  # text blocks; 0: Muse's projection alone
    c.model.pos_init = "normal"  # grid position vectors' init: normal (Muse) or sincos (2-D code)
    # Not in Muse (1): p x p tokens as one transformer position (transformer.GridEmbedding), p*p
    # times fewer positions for a CPU-sized model; must divide grid_size (base stage only)
    c.model.patch_size = 1

    c.masking = ml_collections.ConfigDict()
    c.masking.label_smoothing = 0.1  # on the masked-token cross-entropy (MaskGIT)
    c.masking.caption_dropout = 0.1  # captions replaced by the empty caption (Muse 2.7: 10%)
    c.masking.text_token_dropout = 0.0  # caption tokens hidden from cross-attention (not Muse)

    common.add_optim(c)
    c.optim.name = "adafactor"  # adamw | adafactor (Muse trains with Adafactor)
    c.optim.b2 = 0.96  # second-moment decay (Adam beta2; Adafactor's, from step 56). Muse: 0.96
    c.optim.weight_decay = 0.045  # decoupled, x the scheduled lr each step (Muse: 0.045)
    c.optim.accum_steps = 1  # micro-batches whose gradients are averaged into one update
    c.optim.ema_decay = 0.9999  # EMA of the parameters, used for evaluation and sampling

    c.eval = ml_collections.ConfigDict()
    c.eval.mask_rates = (0.5, 0.9)  # fixed mask rates of the held-out loss and accuracy
    c.eval.num_samples = 8  # images generated from eval captions at each evaluation (0: none)
    c.eval.sample_steps = 24  # decoding steps of those samples (Muse: 24 base, 8 SR)
    # Final guidance scale of those samples, rising linearly from 0 (Muse's schedule); also a
    # base run's default --guidance in `sample` and `evaluate`.
    c.eval.guidance = 4.0
    # Softmax temperature of the tokens those samples draw (0: the most likely token; MaskGIT and
    # Muse sample at 1); also a base run's default --temperature in `sample` and `evaluate`.
    c.eval.temperature = 1.0
    # Decoding defaults of `sample` and `evaluate` for this run when no --preset is given: muse
    # (the paper's, with eval.guidance) or amused (AmusedPipeline's; imported aMUSEd runs).
    c.eval.preset = "muse"

    # Fine-tuning (configs/finetune_256.py): from the run `finetune.init_from` names, all the
    # weights (lora.rank 0) or LoRA adapters on them (models/lora.py; the run's checkpoints
    # then hold the adapters only, sampling adds them to the frozen init_from weights).
    common.add_finetune(c)
    c.finetune.lora = ml_collections.ConfigDict()
    c.finetune.lora.rank = 0  # adapter rank r (0: no adapters; every weight trains)
    c.finetune.lora.alpha = 8.0  # the adapters' delta A B is scaled by alpha / r
    c.finetune.lora.dropout = 0.0  # drop rate of the adapters' rank components (models/lora.py)
    # projections adapted: query key value out (every attention's) and mlp_in mlp_out
    c.finetune.lora.targets = ("query", "key", "value", "out")

    common.add_mesh(c)
    common.add_train(c)
    c.train.num_steps = 1_000_000  # optimiser steps (Muse: 1M at batch 512)

    variant = parse_variant(arg)
    if variant == "3B":  # Muse-3B (paper 2.1 / Table 6)
        c.model.width = 2048
        c.model.depth = 48
        c.model.num_heads = 32
        c.model.mlp_dim = 8192
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of base_256 (known: 3B)")
    return c
