"""Config blocks every stage shares: data, optimiser, mesh, training loop (big_vision's common).

Each `add_*(c, ...)` adds one block to config `c`, its keys commented here once; a reference
config then sets the numbers that differ by stage (a later assignment's comment wins in the
generated README reference). Config files load this module with
`muse_jax.config.load_common()`.
"""
import ml_collections


def add_data(c: ml_collections.ConfigDict) -> None:
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
    # shapes source only: train captions' wording, canonical | varied (drawn per example; the
    # held-out phrasings of data/shapes_captions.py are never used in training)
    c.data.shapes_phrasing = "canonical"
    c.data.shapes_exclude_colors = ()  # shapes source only: colours never drawn (new concepts)
    c.data.shapes_exclude_shapes = ()  # shapes source only: shapes never drawn (new concepts)
    # shapes source only: objects jittered in size and position (off: canonical size, centred)
    c.data.shapes_jitter = True


def add_optim(c: ml_collections.ConfigDict) -> None:
    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # adamw | adafactor
    c.optim.lr = 1e-4  # peak learning rate
    c.optim.b1 = 0.9  # momentum (Adam beta1; Adafactor's momentum, 0: none)
    c.optim.b2 = 0.99  # second-moment decay (Adam beta2; Adafactor's cap)
    c.optim.weight_decay = 1e-4  # decoupled weight decay, x the scheduled lr each step
    # adafactor only: scale each update by its parameter's RMS, making lr relative to the
    # weights' size (optax's default). Off: lr is absolute, as Muse's 1e-4 reads (with it on,
    # 1e-4 of init-scale weights barely moves them; benchmarks/paper_recipe.py).
    c.optim.multiply_by_parameter_scale = False
    c.optim.warmup_steps = 5_000  # linear warmup from 0
    c.optim.schedule = "cosine"  # cosine | constant, after warmup
    c.optim.cosine_span = 1.0  # the cosine reaches 0 at this x train.num_steps (> 1: ends above 0)
    c.optim.grad_clip = 1.0  # global-norm clipping (0: off)


def add_finetune(c: ml_collections.ConfigDict) -> None:
    c.finetune = ml_collections.ConfigDict()
    c.finetune.init_from = ""  # workdir of a trained run of this stage to start from ("" = scratch)


def add_mesh(c: ml_collections.ConfigDict) -> None:
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis (-1: all devices left over)
    c.mesh.fsdp = 1  # parameter/optimiser-state sharding axis
    c.mesh.tensor = 1  # tensor-parallel axis


def add_train(c: ml_collections.ConfigDict) -> None:
    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 500_000  # total optimiser steps
    c.train.log_every = 100  # steps between scalar summaries
    c.train.eval_every = 10_000  # steps between evaluations (and at the end)
    c.train.checkpoint_every = 5_000  # steps between checkpoints (and at the end)
    c.train.keep_checkpoints = 3  # recent checkpoints to keep (one more on disk: see checkpoint.py)
    c.train.max_consecutive_nonfinite = 20  # stop after this many NaN/inf steps (skipped) in a row
    c.train.progress_every_secs = 60.0  # seconds between steps/s + ETA reports
