"""VQGAN tokenizer at paper scale: 256 px -> 16x16 tokens, codebook 8192 (Muse 2.1).

  python -m muse_jax.train --config=configs/vqgan_256.py --workdir=gs://bucket/vqgan_256
  ... --config=configs/vqgan_256.py:finetune   # decoder fine-tuning (Muse 2.5)

Channel layout follows the MaskGIT / taming VQGAN (128 x (1,1,2,2,4), two res blocks a level);
the lookup space is 32-d and l2-normalised as in ViT-VQGAN, Muse's choice of remedy for dead
codes is not stated in the paper.
"""
import ml_collections

from muse_jax.config import parse_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "vqgan"  # which task muse_jax.train runs: vqgan | base | sr
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
    c.data.image_size = 256  # training resolution (shorter side resized, then cropped)
    c.data.batch_size = 256  # global batch, split over processes and the data/fsdp mesh axes
    c.data.eval_batch_size = 64  # global eval batch
    c.data.eval_size = 2048  # held-out examples per evaluation
    c.data.num_workers = 8  # grain worker processes per host (0: decode in the main process)
    c.data.shapes_max_objects = 3  # shapes source only: objects per image, 1..this
    c.data.shapes_train_size = 0  # shapes source only: train examples (0: endless)

    c.model = ml_collections.ConfigDict()
    c.model.channels = 128  # base width of encoder and decoder
    c.model.channel_mult = (1, 1, 2, 2, 4)  # width multipliers; len-1 stride-2 stages: f=16
    c.model.num_res_blocks = 2  # residual blocks per resolution level
    c.model.norm_groups = 32  # GroupNorm groups (must divide every width)
    c.model.attention = False  # self-attention block at the lowest resolution
    c.model.codebook_size = 8192  # number of codes (Muse: 8192)
    c.model.code_dim = 32  # l2-normalised lookup dimension (ViT-VQGAN)
    c.model.beta = 0.25  # commitment-loss weight
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)

    c.loss = ml_collections.ConfigDict()
    c.loss.l1 = 1.0  # weight of the L1 reconstruction loss
    c.loss.l2 = 0.0  # weight of the L2 reconstruction loss
    c.loss.perceptual = 0.1  # weight of the LPIPS loss (off when perceptual_weights is "")
    c.loss.perceptual_weights = ""  # local safetensors file, see muse_jax/models/perceptual.py

    c.gan = ml_collections.ConfigDict()
    c.gan.enabled = True  # train a PatchGAN discriminator at all
    c.gan.start_step = 20_000  # generator's adversarial loss switched on from this step
    c.gan.weight = 0.1  # weight of the generator's hinge loss
    c.gan.channels = 64  # discriminator base width
    c.gan.num_layers = 3  # discriminator stride-2 layers (3: 70x70 patches)
    c.gan.lecam = 0.001  # LeCam regulariser weight (0: off)
    c.gan.lecam_decay = 0.999  # EMA decay of the discriminator logits for LeCam
    c.gan.lr = 1e-4  # discriminator learning rate (same schedule shape as the generator)

    c.finetune = ml_collections.ConfigDict()
    c.finetune.init_from = ""  # workdir of a trained tokenizer to start from ("" = scratch)
    c.finetune.decoder_only = False  # freeze encoder + codebook, train the decoder (Muse 2.5)
    c.finetune.extra_decoder_blocks = 0  # zero-initialised res blocks added a decoder level

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # adamw | adafactor
    c.optim.lr = 1e-4  # peak learning rate
    c.optim.b1 = 0.9  # momentum (Adam beta1; Adafactor's momentum, 0: none)
    c.optim.b2 = 0.99  # second-moment decay (Adam beta2; Adafactor's cap)
    c.optim.weight_decay = 1e-4  # decoupled weight decay, x the scheduled lr each step
    c.optim.multiply_by_parameter_scale = False  # adafactor only: lr relative to each weight's RMS
    c.optim.warmup_steps = 5_000  # linear warmup from 0
    c.optim.schedule = "cosine"  # cosine | constant, after warmup
    c.optim.grad_clip = 1.0  # global-norm clipping (0: off)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis (-1: all devices left over)
    c.mesh.fsdp = 1  # parameter/optimiser-state sharding axis
    c.mesh.tensor = 1  # tensor-parallel axis

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 500_000  # total optimiser steps
    c.train.log_every = 100  # steps between scalar summaries
    c.train.eval_every = 10_000  # steps between evaluations (and at the end)
    c.train.checkpoint_every = 5_000  # steps between checkpoints (and at the end)
    c.train.keep_checkpoints = 3  # recent checkpoints to keep (one more on disk: see checkpoint.py)
    c.train.max_consecutive_nonfinite = 20  # stop after this many NaN/inf steps (skipped) in a row
    c.train.progress_every_secs = 60.0  # seconds between steps/s + ETA reports

    variant = parse_variant(arg)
    if variant == "finetune":
        c.finetune.decoder_only = True
        c.finetune.extra_decoder_blocks = 1
        c.gan.start_step = 0
        c.optim.warmup_steps = 1_000
        c.train.num_steps = 100_000
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of vqgan_256 (known: finetune)")
    return c
