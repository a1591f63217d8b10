"""Fine-tuning an imported aMUSEd run on a handful of captioned images: LoRA by default.

  python -m muse_jax.import_diffusers --src=/models/amused-256 --workdir=runs/amused-256
  python -m muse_jax.train --config=configs/finetune_amused.py:runs/amused-256 \\
      --workdir=runs/amused-256-ft --config.data.path=DIR
  ... --config=configs/finetune_amused.py:runs/amused-256,full   # full fine-tuning (or ,variant=full)
  python -m muse_jax.sample --workdir=runs/amused-256-ft --prompt="..."   # the amused preset

The argument is the imported run's directory (local or gs://; no comma in it): a fine-tune
must have the parameters of the run it starts from, so its model, text and tokenizer blocks
and its image size are that run's config.json's, and `finetune.init_from` names it. DIR: 8 to
64 images with same-name .txt captions, one a line (data.source image_folder), repeated; the
last `data.eval_size` are held out.

The numbers are the defaults of diffusers' examples/amused/train_amused.py (LoRA r 16, alpha
32, AdamW lr 3e-4, betas (0.9, 0.999), weight decay 1e-2, constant lr, batch 16, no EMA, no
gradient clipping, no label smoothing or caption dropout) but where a comment says otherwise.
Two departures that are not settings: train_amused.py sends each image's original size and
crop as micro-conditioning, muse_jax the run's fixed `model.micro_conditioning`; and it
exempts biases, norms and embeddings from weight decay, muse_jax decays every trained weight
(only adapters, with LoRA: the same there). The model trains in float32, as imported;
`--config.model.dtype=bfloat16` (and `model.remat=True`) for speed and memory on accelerators.
"""
from pathlib import Path

from etils import epath

from muse_jax import runs
from muse_jax.config import ConfigError, load_file, parse_variant

_USAGE = "--config=configs/finetune_amused.py:RUN[,full]"


def _imported_run(path: str):
    """The run `path` names, opened as `runs.open_run` opens any (its paths resolved)."""
    if not path:
        raise ConfigError(f"configs/finetune_amused.py needs the imported run: {_USAGE} (RUN "
                          f"written by python -m muse_jax.import_diffusers --src=FOLDER --workdir=RUN)")
    if not epath.Path(path, "config.json").is_file():  # open_run's message suggests training one
        raise ConfigError(f"configs/finetune_amused.py:{path}: {path}/config.json not found; "
                          f"import an aMUSEd folder there first (python -m muse_jax."
                          f"import_diffusers --src=FOLDER --workdir={path})")
    run = runs.open_run(path, "base", f"configs/finetune_amused.py:{path}")
    if run.config.model.get("kind") != "uvit":
        raise ConfigError(f"configs/finetune_amused.py:{path} is a {run.config.model.get('kind')!r} "
                          f"model, not an imported aMUSEd (model.kind 'uvit'); fine-tune it with "
                          f"configs/finetune_256.py or finetune_shapes.py")
    return run


def get_config(arg=None):
    path, _, rest = (arg or "").partition(",")
    imported = _imported_run(path)
    c = load_file(Path(__file__).with_name("base_256.py"))  # every base-stage key, commented there
    c.model = imported.config.model  # aMUSEd's U-ViT (model.diffusers) and micro-conditioning
    c.text = imported.config.text  # its CLIP text encoder and tokenizer (read from the folder)
    c.tokenizer = imported.config.tokenizer  # its VQ-GAN, the run's tokenizer/ subdirectory
    c.data.image_size = imported.config.data.image_size  # 256 (512): what its VQ-GAN takes

    c.finetune.init_from = imported.path  # the frozen weights the adapters are added to
    c.finetune.lora.rank = 16  # train_amused.py's --lora_r
    c.finetune.lora.alpha = 32.0  # its --lora_alpha: the adapters' delta x alpha / r = 2
    c.finetune.lora.dropout = 0.0  # PEFT's LoraConfig default, which train_amused.py keeps
    # its --lora_target_modules to_q to_k to_v: every attention's, the output projection not
    c.finetune.lora.targets = ("query", "key", "value")

    c.data.source = "image_folder"  # images + same-name .txt captions (--config.data.path)
    c.data.path = ""  # set on the command line: the folder of captioned images
    c.data.random_flip = False  # train_amused.py does not flip (flips swap left and right)
    c.data.batch_size = 16  # its --train_batch_size (few images: the stream repeats them)
    c.data.eval_batch_size = 4  # held-out images per eval batch
    c.data.eval_size = 4  # the folder's last 4 images are held out (not trained on)
    c.data.num_workers = 2  # decoding a few images needs little

    c.masking.label_smoothing = 0.0  # train_amused.py's plain cross-entropy
    c.masking.caption_dropout = 0.0  # its --cond_dropout_prob default

    c.optim.name = "adamw"  # torch.optim.AdamW there (eps 1e-8: optax's default too)
    c.optim.lr = 3e-4  # its --learning_rate default
    c.optim.b1 = 0.9  # its --adam_beta1
    c.optim.b2 = 0.999  # its --adam_beta2
    c.optim.weight_decay = 1e-2  # its --adam_weight_decay (decoupled, x lr: AdamW's)
    # Its --lr_scheduler constant ignores --lr_warmup_steps (diffusers' get_scheduler): no warmup.
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"  # its --lr_scheduler
    c.optim.grad_clip = 0.0  # its --max_grad_norm default None: no clipping
    c.optim.ema_decay = 0.0  # its --use_ema is off: sampling uses the trained weights
    c.optim.accum_steps = 1  # its --gradient_accumulation_steps

    # `sample` and `evaluate` decode the fine-tune as the run it starts from: AmusedPipeline's
    # preset (runs imported before eval.preset existed lack the key; they are aMUSEd all the same).
    c.eval.preset = imported.config.eval.get("preset", "amused")
    c.eval.num_samples = 4  # held-out captions sampled at each evaluation
    c.eval.sample_steps = 12  # AmusedPipeline's steps
    # Departure: train_amused.py takes --max_train_steps (no default); its README's LoRA recipes
    # give decent results in 1000-1250 steps at lr 8e-4 (256) or 500-1000 at 1e-4 (512).
    c.train.num_steps = 1000
    c.train.log_every = 50  # its --logging_steps
    c.train.eval_every = 250  # its README recipes' --validation_steps
    c.train.checkpoint_every = 500  # its --checkpointing_steps

    variant = parse_variant(rest or None)
    if variant == "full":  # every weight trains, from the same run
        c.finetune.lora.rank = 0
        # Departure: 3e-4 is the LoRA default; its README's full fine-tune of amused-256 uses
        # 1e-4 at batch 8 (750-1000 steps; amused-512: 8e-5).
        c.optim.lr = 1e-4
        c.data.batch_size = 8
    elif variant:
        raise ConfigError(f"unknown variant {variant!r} of finetune_amused (known: full; "
                          f"{_USAGE})")
    return c
