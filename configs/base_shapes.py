"""Base masked transformer for the shapes set on a CPU: 16x16 tokens, MiniLM captions.

The reference config (base_256.py) with smaller numbers; every key is documented there.
Needs a shapes tokenizer first, in workdirs/vqgan_shapes (configs/vqgan_shapes.py):

  python -m muse_jax.train --config=configs/base_shapes.py --workdir=workdirs/base_shapes
"""
from pathlib import Path

from muse_jax.config import load_file, parse_variant


def get_config(arg=None):
    c = load_file(Path(__file__).with_name("base_256.py"))
    c.data.source = "shapes"
    c.data.image_size = 64
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.data.eval_size = 256
    c.data.num_workers = 0

    c.tokenizer.workdir = "workdirs/vqgan_shapes"

    c.text.encoder = "minilm"
    # The longest shapes caption in MiniLM tokens (3,000 sampled each): canonical 28, varied 38,
    # held-out phrasings 40.
    c.text.max_length = 40
    c.text.dtype = "float32"
    c.text.batch_size = 64

    c.model.codebook_size = 256
    c.model.grid_size = 16
    c.model.text_dim = 384
    c.model.width = 128
    c.model.depth = 4
    c.model.num_heads = 4
    c.model.mlp_dim = 512
    c.model.dropout = 0.0
    c.model.dtype = "float32"  # bf16 is no faster on CPUs
    c.model.remat = False

    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.01
    c.optim.warmup_steps = 200
    c.optim.ema_decay = 0.99

    c.train.num_steps = 2000
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.progress_every_secs = 20.0

    variant = parse_variant(arg)
    if variant == "tiny":  # the tests' config: seconds per run (with the tiny tokenizer)
        c.data.batch_size = 8
        c.data.eval_batch_size = 16
        c.data.eval_size = 32
        # MiniLM's first layer only: the frozen encoder is traced and compiled into every tiny
        # run's steps, and its six layers were ~6 % of the test suite's CPU (py-spy,
        # 2026-12-07). Base and SR tiny runs must read the same embeddings (cascades).
        c.text.num_layers = 1
        c.model.codebook_size = 64
        c.model.width = 32
        c.model.depth = 1
        c.model.num_heads = 2
        c.model.mlp_dim = 64
        c.train.num_steps = 4
        c.train.log_every = 1
        # No sample grid: its sampler and decoder compiled into every tiny run were ~2 % of the
        # test suite's CPU (py-spy, 2026-12-07); the tests of the grid ask for one.
        c.eval.num_samples = 0
        c.eval.sample_steps = 2
        c.train.eval_every = 4
        c.train.checkpoint_every = 2
        c.data.shapes_train_size = 64  # finite, so the demo's inputs can be precomputed
    elif variant == "demo":  # `make demo` (muse_jax/demo.py): trains from precomputed inputs
        c.data.shapes_train_size = 10_000  # 1 MiniLM pass over 10k captions, then ~5 epochs
        c.data.shapes_phrasing = "varied"  # the report also scores phrasings never trained on
        c.data.eval_size = 128
        # Objects at their canonical size and place (not in the shapes world's default): one
        # look per colour, shape and cell, so the minutes go to reading the caption, not to
        # modelling jitter. demo_recipe.py, 600 steps of the recipe before, 64 prompts
        # (2026-12-04): 18.8% -> 32.8% exactly right (shapes 42% -> 61%).
        c.data.shapes_jitter = False
        # 2x2 tokens a transformer position (64 positions, not 256): 0.18-0.19 s a step against
        # 0.78 s on the same machine (2026-12-04), so 1500 steps cost what 360 did. Same inputs,
        # 2000 steps of lr 2e-3: 45% / 72% / 78% exactly right at steps 1000 / 1500 / 2000
        # (colour 98%, cells 99% at 2000), where 600 steps of 256 positions gave 33%.
        c.model.patch_size = 2
        # lr 2e-3 (lr 3e-3 over 1000 steps: 18.8%; binding clicks after a plateau, which a
        # higher lr lengthens and a shorter cosine cuts short).
        c.optim.lr = 2e-3
        c.optim.warmup_steps = 100
        # The cosine spans 4/3 of the run and the run stops, the lr still at 16% of its peak (the
        # measurements below: 1500 steps of a 2000-step cosine, before the text blocks).
        # Chosen with samples guided to 4, where the last stretch of a cosine to zero cost the
        # oracle: demo_recipe.py on the demo's inputs, 128 prompts (2026-12-05), one 2000-step
        # run scored 52.3 / 78.1 / 67.2% canonical at steps 1000 / 1500 / 2000; 1500 steps with
        # this span 78.1% / 41.4% held-out phrasings, the 1500-step cosine to zero 50.0% / 20.3%
        # (64 prompts). At the demo's guidance 1 (muse_jax/demo.py) that drop is gone: the
        # 2000-step run's last checkpoint scores 92.2% / 50.0% (128 prompts), this span's 1500
        # steps 94.5% / 53.5% (256), the only 1500-step model measured at guidance 1. Fewer
        # steps fall short: step 1000 of the 2000-step run 64.8%, a 1200-step cosine to zero
        # 46.9% (shapes 73%: they come last; 128 prompts).
        c.optim.cosine_span = 2000 / 1500
        # A sin-cos start for the grid positions (not in Muse; transformer.py says why).
        c.model.pos_init = "sincos"
        # MiniLM's layer-2 states, not its last layer's: a reader of the captions alone
        # (benchmarks/text_probe.py, 600 steps of batch 32, 512 held-out scenes, 2026-12-03)
        # gets 93.5% of canonical captions exactly right from them, 44.3% from the last layer's
        # (layer 3: 74.6%, 4: 60.5%). Two layers are also a third of the encoder's cost.
        c.text.num_layers = 2
        # Those states alone, not their mean with the embedding layer's
        # (text.mean_with_embeddings): the text probe's readers of the mean followed held-out
        # phrasings more often (75.8-87.9 % against 59.0-75.0 %, 3 of 4 seeds; the fourth had not
        # learned to bind by step 1500), but the demo's model did not: on 256 prompts a wording
        # (`evaluate --eval=shapes_oracle|shapes_phrasings`, 2026-12-06) 83.2 / 66.0 % canonical
        # / held-out phrasings against 87.5 / 67.2 % for this recipe's model.
        # Two text blocks over them (trainable self-attention, transformer.TextBlocks): they bind
        # each object's words in wording training never used. The demo's inputs, 256 prompts a
        # wording, canonical / held-out phrasings exactly right, by objects 1 / 2 / 3 held-out
        # (2026-12-06): none 87.5 / 67.2 % (89 / 65 / 49 %), two 94.9 / 92.6 % (95 / 94 / 89 %)
        # at 1500 steps; the text probe agrees (benchmarks/text_probe.py: 78-86 % against 59-75 %
        # over three seeds). They cost a fifth of the step (0.30 against 0.24 s a step, MLP 512),
        # which the narrower MLP below buys back. Two on layer 2 at 600 steps of an older recipe
        # (2026-12-03) were within the noise of 64 prompts.
        c.model.text_depth = 2
        # Samples (and `sample` / `evaluate` of this run) guided to 1, not Muse's 4: this small
        # model over-sharpens under strong guidance (notched squares, mixed colours). One base
        # run of this recipe, 256 held-out prompts a scale, canonical / held-out phrasings
        # exactly right (2026-12-05): guidance 0.5 93.4 / 50.8 %, 1 94.5 / 53.5 %, 2 90.6 /
        # 50.4 %; on 128 prompts 0 90.6 %, 4 78.1 / 41.4 %, 8 47.7 / 25.8 %.
        c.eval.guidance = 1.0
        # Tokens drawn at temperature 0.5, not Muse's 1: at 1 this small model draws unlikely
        # tokens into its shapes (dark holes in squares, specks on the background). The demo's
        # models, 256 held-out prompts a wording, canonical / held-out phrasings exactly right
        # at temperature 1, 0.5 and 0 (greedy) (`evaluate --eval=shapes_oracle|shapes_phrasings
        # --temperature=T`, 2026-12-07): base seed 0 92.6 / 88.3, 95.7 / 92.2 and 95.7 / 92.2 %;
        # seed 1 91.8 / 91.4, 93.8 / 92.2 and 94.1 / 96.1 %. Mask-free edits of seed 0
        # (`--eval=shapes_edit`, 32): the prompt's change made in 71.9 / 100 / 96.9 %, the rest
        # kept in 100 / 100 / 96.9 %. 0.5, not 0, so that images of one prompt still differ.
        c.eval.temperature = 0.5
        # 1500 steps of an MLP half as wide (256): the step drops from 0.30 to 0.23 s, so the run
        # costs what 1200 steps of MLP 512 did, and binding needs the steps more than the width.
        # 256 prompts a wording, canonical / held-out phrasings exactly right (2026-12-06, the
        # cosine spanning 4/3 of each run): MLP 512, 1200 steps 91.4 / 84.4 % (base seed 1, its
        # own inputs and held-out scenes: 86.3 / 82.8 %, shapes drawn wrong), 1500 steps 94.9 /
        # 92.6 % (497 s of training), 1000 steps 86.3 / 82.4 %; MLP 256, 1200 steps 87.9 / 82.4 %,
        # 1500 steps 93.4 / 94.1 % (seed 1: 93.8 / 78.1 %, cells missed in held-out phrasings:
        # the seed moves those most; seed 2: 94.5 / 92.2 %). Without the text blocks (MLP 512,
        # 1500 steps): 87.5 / 67.2 %.
        c.model.mlp_dim = 256
        # Four heads of 32, as above, though two of 64 take 13 % less time a step at the same
        # FLOPs (0.209-0.216 against 0.235-0.254 s, the jitted step on fixed batches,
        # 2026-12-06): 256 prompts a wording, two heads scored 91.4 / 87.5 % (base seed 0) and
        # 82.8 / 80.5 % (seed 1) canonical / held-out phrasings, against 93.4 / 94.1 % and
        # 93.8 / 78.1 % for four (all with the four trunk blocks of before).
        # Three blocks of the trunk, not four: 18 % fewer FLOPs a step (6.1 against 7.5 GFLOP a
        # device; 0.21-0.24 against 0.235-0.254 s, the jitted step on fixed batches), and on 256
        # prompts a wording (2026-12-06) every seed above 90 / 80 %: canonical / held-out
        # phrasings exactly right 94.9 / 85.5 % (base seed 0), 91.4 / 85.5 % (seed 1), 93.8 / 91.4 %
        # (seed 2), against 93.4 / 94.1, 93.8 / 78.1 and 94.5 / 92.2 % for four.
        # Two blocks for 1650 steps (below), not three for 1500: 22 % fewer FLOPs a step (4.8
        # against 6.1 GFLOP a device; 0.15-0.16 s a step on fixed batches), 14 % fewer in all,
        # and every seed still above 90 / 80 % (2026-12-06, each seed on its own inputs and
        # held-out scenes, 256 prompts a wording): 92.6 / 88.3 % (base seed 0), 91.8 / 91.4 %
        # (seed 1), 93.4 / 95.3 % (seed 2). Seed 0's run took 289 s against 368 s for three
        # blocks (its eval grid included) on the same machine that afternoon. Two blocks for
        # 1500 steps fell short: 88.7 / 86.7 % on seed 1.
        c.model.depth = 2
        # No sample grid at the run's evaluation: the demo draws samples.png from the images
        # its oracle scored. The grid's sampler compile and samples cost ~8 s of the run
        # (20-step runs on the demo's inputs, 2026-12-06: 49.1 / 53.0 s against 42.6 / 44.0 s).
        c.eval.num_samples = 0
        # Batch 32 (from above) for 1650 steps. Batch 64 for 800 steps (three blocks), about the
        # examples of 1500 of 32, scored 82.0 % canonical (base seed 0, 256 prompts, 2026-12-06)
        # against 94.9 %, in a run of 330 s against 368 s: a step of 64 costs ~1.6x one of 32.
        c.train.num_steps = 1650
        c.train.eval_every = 1650
        c.train.checkpoint_every = 550
    elif variant == "paper":  # base_256's optimiser as Muse trains it, on this small model
        # tests/test_paper_recipe.py and benchmarks/paper_recipe.py: Adafactor with the paper's
        # b1 0.9, b2 0.96 and weight decay 0.045, from base_256.py. Scaled for a run of hundreds
        # of steps instead of 1M: peak lr 1e-3 (not 1e-4) and 50 warm-up steps (not 5000).
        paper = load_file(Path(__file__).with_name("base_256.py")).optim
        c.optim = paper
        c.optim.lr = 1e-3
        c.optim.warmup_steps = 50
        c.optim.ema_decay = 0.99  # the EMA of 0.9999 would still be the init after 300 steps
        c.train.num_steps = 300
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of base_shapes (known: tiny, demo, paper)")
    return c
