"""Fine-tuning a shapes base run on a handful of captioned images, on a CPU (LoRA by default).

  python -m muse_jax.train --config=configs/finetune_shapes.py --workdir=workdirs/ft_shapes \\
      --config.finetune.init_from=workdirs/base_shapes --config.data.path=DIR
  ... --config=configs/finetune_shapes.py:full    # full fine-tuning: the same run, LoRA off

DIR holds the images (8 to 64) with same-name .txt captions, one a line (data.source
image_folder; bad files are skipped and counted as in any run); the last `data.eval_size` of
them are held out. The stream repeats them. base_shapes.py's model, tokenizer and text
encoder: a fine-tune must match the run it starts from (checked when its weights load).
"""
from pathlib import Path

from muse_jax.config import load_file, parse_variant


def get_config(arg=None):
    c = load_file(Path(__file__).with_name("base_shapes.py"))
    c.finetune.init_from = "workdirs/base_shapes"
    c.finetune.lora.rank = 8
    c.finetune.lora.alpha = 8.0
    c.finetune.lora.dropout = 0.0
    c.finetune.lora.targets = ("query", "key", "value", "out")

    c.data.source = "image_folder"
    c.data.path = "workdirs/finetune_images"
    c.data.min_size = 32
    c.data.batch_size = 8
    c.data.eval_batch_size = 4
    c.data.eval_size = 4

    c.optim.lr = 1e-3  # LoRA takes a larger rate than the weights themselves (alpha / r = 1)
    c.optim.weight_decay = 0.0  # decay would pull the adapters (not the weights) to zero
    c.optim.warmup_steps = 10
    c.optim.schedule = "constant"
    c.optim.ema_decay = 0.9  # a few hundred steps: the EMA must follow them

    c.eval.num_samples = 4
    c.train.num_steps = 300
    c.train.log_every = 25
    c.train.eval_every = 100
    c.train.checkpoint_every = 50

    variant = parse_variant(arg)
    if variant in ("full", "tiny_full"):  # every weight trains, from the same run
        c.finetune.lora.rank = 0
        c.optim.lr = 2e-4
    if variant in ("tiny", "tiny_full"):  # the tests': base_shapes:tiny's model, seconds a run
        tiny = load_file(Path(__file__).with_name("base_shapes.py"), "tiny")
        c.model = tiny.model
        c.finetune.lora.rank = 2 if variant == "tiny" else 0
        c.finetune.lora.dropout = 0.1 if variant == "tiny" else 0.0
        c.data.batch_size = 8
        c.data.eval_batch_size = 8
        c.data.eval_size = 8
        c.eval.num_samples = 2
        c.eval.sample_steps = 2
        c.train.num_steps = 6
        c.train.log_every = 1
        c.train.eval_every = 6
        c.train.checkpoint_every = 2
    elif variant not in (None, "full"):
        raise ValueError(f"unknown variant {variant!r} of finetune_shapes (known: full, tiny, "
                         f"tiny_full)")
    return c
