"""Base masked transformer at paper scale: 16x16 tokens of a 256 px VQGAN, T5-XXL text (Muse 2.2).

  python -m muse_jax.train --config=configs/base_256.py --workdir=gs://bucket/base_256 \\
      --config.tokenizer.workdir=gs://bucket/vqgan_256 --config.text.path=/models/t5-v1_1-xxl
  ... --config=configs/base_256.py:3B     # Muse-3B: 48 layers, width 2048, MLP 8192, 32 heads

Every key of the `base` stage is named and commented here; other base configs load this one.
"""
import ml_collections

from muse_jax.config import parse_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "base"  # which task muse_jax.train runs: vqgan | base | sr
    c.seed = 0  # init, data order and every per-step RNG derive from it (and the step)

    c.data = ml_collections.ConfigDict()
    # shapes | image_folder (images + same-name .txt captions, one a line) | array_record
    # (written by `python -m muse_jax.data.convert`) | tfds (a prepared TFDS dataset)
    c.data.source = "image_folder"
    c.data.path = ""  # image_folder, array_record (local or gs://): directory; tfds: data_dir
    c.data.eval_path = ""  # array_record: converted eval dir ("": last eval_size of path)
    c.data.tfds_name = ""  # tfds: name[/config], e.g. coco_captions/2014 (never downloaded)
    c.data.tfds_train_split = "train"  # tfds: split to train on
    c.data.tfds_eval_split = ""  # tfds: eval split ("": last eval_size of the train split)
    c.data.min_size = 32  # images with a shorter side below this are skipped (and counted)
    c.data.max_aspect_ratio = 3.0  # skip images whose long/short side ratio exceeds this (0: any)
    c.data.random_flip = False  # horizontal flips (off: they swap "left"/"right" in captions)
    c.data.image_size = 256  # must be what the tokenizer was trained at
    c.data.batch_size = 512  # global batch (Muse: 512)
    c.data.eval_batch_size = 128  # global eval batch
    c.data.eval_size = 4096  # held-out examples per evaluation
    c.data.num_workers = 8  # grain worker processes per host (0: in the main process)
    c.data.shapes_max_objects = 3  # shapes source only: objects per image, 1..this
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
    c.text.encoder = "t5"  # minilm | t5 (see muse_jax/text/__init__.py)
    c.text.path = ""  # local checkpoint directory (T5-XXL in the paper)
    c.text.max_length = 64  # caption tokens; longer captions are truncated
    c.text.dtype = "bfloat16"  # encoder compute and weight dtype (frozen)
    c.text.batch_size = 256  # prompts per encoder call outside training (sampling, precompute)

    c.model = ml_collections.ConfigDict()
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

    c.masking = ml_collections.ConfigDict()
    c.masking.label_smoothing = 0.1  # on the masked-token cross-entropy (MaskGIT)
    c.masking.caption_dropout = 0.1  # captions replaced by the empty caption (Muse 2.7: 10%)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adafactor"  # adamw | adafactor (Muse trains with Adafactor)
    c.optim.lr = 1e-4  # peak learning rate
    c.optim.b1 = 0.9  # momentum (Adam beta1; Adafactor's momentum, 0: none). Muse: 0.9
    c.optim.b2 = 0.96  # second-moment decay (Adam beta2; Adafactor's, from step 56). Muse: 0.96
    c.optim.weight_decay = 0.045  # decoupled, x the scheduled lr each step (Muse: 0.045)
    # adafactor only: scale each update by its parameter's RMS, making lr relative to the
    # weights' size (optax's default). Off: lr is absolute, as Muse's 1e-4 reads (with it on,
    # 1e-4 of init-scale weights barely moves them; measured in tests/test_paper_recipe.py).
    c.optim.multiply_by_parameter_scale = False
    c.optim.warmup_steps = 5_000  # linear warmup from 0
    c.optim.schedule = "cosine"  # cosine | constant, after warmup
    c.optim.grad_clip = 1.0  # global-norm clipping (0: off)
    c.optim.accum_steps = 1  # micro-batches whose gradients are averaged into one update
    c.optim.ema_decay = 0.9999  # EMA of the parameters, used for evaluation and sampling

    c.eval = ml_collections.ConfigDict()
    c.eval.mask_rates = (0.5, 0.9)  # fixed mask rates of the held-out loss and accuracy
    c.eval.num_samples = 8  # images generated from eval captions at each evaluation (0: none)
    c.eval.sample_steps = 24  # decoding steps of those samples (Muse: 24 base, 8 SR)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis (-1: all devices left over)
    c.mesh.fsdp = 1  # parameter/optimiser-state sharding axis
    c.mesh.tensor = 1  # tensor-parallel axis

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1_000_000  # optimiser steps (Muse: 1M at batch 512)
    c.train.log_every = 100  # steps between scalar summaries
    c.train.eval_every = 10_000  # steps between evaluations (and at the end)
    c.train.checkpoint_every = 5_000  # steps between checkpoints (and at the end)
    c.train.keep_checkpoints = 3  # recent checkpoints to keep (one more on disk: see checkpoint.py)
    c.train.max_consecutive_nonfinite = 20  # stop after this many NaN/inf steps (skipped) in a row
    c.train.progress_every_secs = 60.0  # seconds between steps/s + ETA reports

    variant = parse_variant(arg)
    if variant == "3B":  # Muse-3B (paper 2.1 / Table 6)
        c.model.width = 2048
        c.model.depth = 48
        c.model.num_heads = 32
        c.model.mlp_dim = 8192
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of base_256 (known: 3B)")
    return c
