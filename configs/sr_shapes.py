"""Super-resolution transformer for the shapes set on a CPU: 16x16 tokens at 64 px -> 32x32 at 128 px.

The reference config (sr_512.py) with smaller numbers; every key is documented there and in
base_256.py. Needs the base stage's tokenizer (workdirs/vqgan_shapes, `make demo`) and the
128 px one (configs/vqgan_shapes_hr.py):

  python -m muse_jax.train --config=configs/sr_shapes.py --workdir=workdirs/sr_shapes
  python -m muse_jax.evaluate --eval=shapes_sr --workdir=workdirs/base_shapes \\
      --sr_workdir=workdirs/sr_shapes --num_samples=128 --sr_guidance=1 --temperature=0.3

Measured on 2026-11-27, 1000 steps (13 min alone on 2 cores, 1.3 steps/s) on the full
vqgan_shapes tokenizer (30.7 dB) and vqgan_shapes_hr fine-tuned from it, 128 held-out captions,
8 SR steps, --sr_guidance=1 --temperature=0.3, from real low-res tokens: 96.1% of SR outputs
parse like their decoded low-res input, 95.3% match their caption; 29.3 dB against the 128 px
renders, where bicubic upsampling of the decoded low-res image gets 29.1 dB and the 128 px
tokenizer itself 33.4 dB. On the weaker `make demo` tokenizer (28.5 dB) the same recipe gave
88.3% agreement (93.0% caption match): the agreement is bounded by how well the low-res
tokenizer draws the input. The paper's sampling settings do worse here (demo tokenizer, 64
captions): guidance rising to 4 at temperature 1 gives 67% agreement and 25.8 dB; no guidance
at temperature 1, 78% and 27.4 dB. From the demo base model's own samples (600 steps, 33%
oracle accuracy) instead of real tokens: 50% agreement. 250 steps (2026-11-25) gave 75%;
without `low_res_skip`, 250 steps reached 0% agreement and 16 dB.
"""
from pathlib import Path

from muse_jax.config import load_file, parse_variant


def get_config(arg=None):
    c = load_file(Path(__file__).with_name("sr_512.py"))
    c.data.source = "shapes"
    c.data.image_size = 128
    c.data.batch_size = 8  # 8 x 1024 tokens a step, as base_shapes' 32 x 256
    c.data.eval_batch_size = 32
    c.data.eval_size = 64
    c.data.num_workers = 0

    c.tokenizer.workdir = "workdirs/vqgan_shapes_hr"
    c.low_res.image_size = 64
    c.low_res.tokenizer_workdir = "workdirs/vqgan_shapes"

    c.text.encoder = "minilm"
    c.text.max_length = 40  # as base_shapes.py
    c.text.dtype = "float32"
    c.text.batch_size = 64

    c.model.codebook_size = 256
    c.model.grid_size = 32
    c.model.low_res_grid_size = 16
    c.model.low_res_codebook_size = 256
    c.model.low_res_depth = 2
    c.model.text_dim = 384
    c.model.width = 128
    c.model.depth = 4
    c.model.num_heads = 4
    c.model.mlp_dim = 512
    c.model.attention_window = 8  # 8x8 blocks, and lattices of stride 4: 64 keys per query
    # Not in Muse (see sr_512.py): with cross-attention alone, 250 steps on a CPU left the low-res
    # tokens unused (eval accuracy 0.89 against 0.79 for always guessing the background, and
    # SR outputs whose objects were blobs in the wrong places).
    c.model.low_res_skip = True
    c.model.dropout = 0.0
    c.model.dtype = "float32"  # bf16 is no faster on CPUs
    c.model.remat = False

    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.01
    c.optim.warmup_steps = 25
    c.optim.ema_decay = 0.99

    c.train.num_steps = 1000  # 1.3 steps/s on 2 quiet cores
    c.train.log_every = 25
    c.train.eval_every = 500
    c.train.checkpoint_every = 100
    c.train.progress_every_secs = 20.0

    variant = parse_variant(arg)
    if variant == "tiny":  # the tests' config: vqgan_shapes:tiny as both tokenizers (64 and 128 px)
        c.data.eval_batch_size = 16
        c.data.eval_size = 16
        # MiniLM's first layer only: the frozen encoder is traced and compiled into every tiny
        # run's steps, and its six layers were ~6 % of the test suite's CPU (py-spy,
        # 2026-12-07). Base and SR tiny runs must read the same embeddings (cascades).
        c.text.num_layers = 1
        c.model.codebook_size = 64
        c.model.low_res_codebook_size = 64
        c.model.low_res_depth = 1
        c.model.width = 32
        c.model.depth = 1
        c.model.num_heads = 2
        c.model.mlp_dim = 64
        c.train.num_steps = 2
        c.train.log_every = 1
        c.eval.num_samples = 2
        c.eval.sample_steps = 2
        c.train.eval_every = 2
        c.train.checkpoint_every = 2
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of sr_shapes (known: tiny)")
    return c
