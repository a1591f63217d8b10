"""Fine-tuning a paper-size base run (base_256.py) on a handful of captioned images: LoRA.

  python -m muse_jax.train --config=configs/finetune_256.py --workdir=gs://bucket/ft \\
      --config.finetune.init_from=gs://bucket/base_256 --config.data.path=DIR \\
      --config.tokenizer.workdir=gs://bucket/vqgan_256 --config.text.path=/models/t5-v1_1-xxl
  ... --config=configs/finetune_256.py:full     # full fine-tuning: the same run, LoRA off
  ... --dry_run --num_devices=8                 # memory per device of either (muse_jax/plan.py)

DIR: 8 to 64 images with same-name .txt captions (data.source image_folder), repeated. The
numbers follow what aMUSEd's LoRA recipe uses (rank 8-16, lr 1e-4 order, a few thousand
steps at a small batch); they are a starting point, not a measured optimum at this size.
"""
from pathlib import Path

from muse_jax.config import load_file, parse_variant


def get_config(arg=None):
    c = load_file(Path(__file__).with_name("base_256.py"))
    c.finetune.init_from = ""  # set on the command line: the base run to adapt
    c.finetune.lora.rank = 16
    c.finetune.lora.alpha = 16.0
    c.finetune.lora.dropout = 0.0

    c.data.source = "image_folder"
    c.data.batch_size = 8
    c.data.eval_batch_size = 8
    c.data.eval_size = 8
    c.data.num_workers = 2

    c.optim.name = "adamw"
    c.optim.lr = 1e-4
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 100
    c.optim.schedule = "constant"
    c.optim.ema_decay = 0.99

    c.eval.num_samples = 8
    c.train.num_steps = 2000
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500

    variant = parse_variant(arg)
    if variant == "full":
        c.finetune.lora.rank = 0
        c.optim.lr = 1e-5
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of finetune_256 (known: full)")
    return c
