"""configs/finetune_amused.py: an imported aMUSEd run fine-tuned by the `train` command and
sampled by the `sample` command, on the tiny random aMUSEd of amused_tiny.py.

The config copies the imported run's model, text and tokenizer blocks (a fine-tune must have
its parameters); the end-to-end test runs the CLIs as a user does and measures what LoRA
promises: adapter-only checkpoints, the base run untouched, `--lora_scale=0` the base model.
"""
import hashlib

import flax
import jax
import numpy as np
import pytest
from PIL import Image

from muse_jax import checkpoint, runs
from muse_jax import config as config_lib
from muse_jax.config import ConfigError
from muse_jax.models import lora

from amused_tiny import VQ_FACTOR, amused  # noqa: F401  (fixture)
from image_files import photo

CONFIG = config_lib.CONFIG_DIR / "finetune_amused.py"
CAPTIONS = ["a red square", "the cat", "the dog and the cat", "a cat and a dog",
            "a red dog", "the square", "and the cat", "a dog"]


def test_config_takes_the_imported_runs_blocks_and_validates(amused):
    _, _, run = amused
    imported = runs.open_run(str(run), "base")
    c = config_lib.load_file(CONFIG, str(run))
    config_lib.validate(c)
    for block in ("model", "text", "tokenizer"):
        assert c[block].to_dict() == imported.config[block].to_dict(), block
    assert c.tokenizer.workdir == str(run / "tokenizer")  # resolved against the run
    assert c.data.image_size == 4 * VQ_FACTOR and c.data.source == "image_folder"
    assert c.finetune.init_from == str(run)
    assert (c.finetune.lora.rank, c.finetune.lora.alpha) == (16, 32.0)  # train_amused.py's
    assert (c.optim.name, c.optim.lr, c.optim.b2, c.optim.weight_decay) == ("adamw", 3e-4, 0.999, 1e-2)
    full = config_lib.load_file(CONFIG, f"{run},full")
    config_lib.validate(full)
    assert full.to_dict() == config_lib.load_file(CONFIG, f"{run},variant=full").to_dict()
    assert (full.finetune.lora.rank, full.optim.lr) == (0, 1e-4)
    assert full.model.to_dict() == c.model.to_dict()


def test_a_missing_run_or_unknown_variant_is_one_line(amused, tmp_path):
    _, _, run = amused
    cases = {str(tmp_path / "nowhere"): r"nowhere/config\.json not found; import an aMUSEd",
             "": r"needs the imported run: --config=configs/finetune_amused\.py:RUN",
             f"{run},huge": r"unknown variant 'huge' of finetune_amused",
             str(run / "tokenizer"): r"is a 'vqgan' run; configs/finetune_amused\.py:\S+ needs a base"}
    for arg, message in cases.items():
        with pytest.raises(ConfigError, match=message) as e:
            config_lib.load_file(CONFIG, arg)
        assert "\n" not in str(e.value)
    from conftest import run_module  # the same line from the train command, exit status 2

    result = run_module("muse_jax.train", f"--config=configs/finetune_amused.py:{tmp_path / 'x'}",
                        f"--workdir={tmp_path / 'ft'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: configs/finetune_amused.py:{tmp_path / 'x'}: {tmp_path / 'x'}/config.json not "
        f"found; import an aMUSEd folder there first (python -m muse_jax.import_diffusers "
        f"--src=FOLDER --workdir={tmp_path / 'x'})"]


def _images(folder):
    folder.mkdir()
    for i, caption in enumerate(CAPTIONS):
        Image.fromarray(photo(32, 32, seed=i)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption + "\n")
    return folder


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _disk_bytes(root):
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _state_bytes(state):
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))


@pytest.mark.slow  # the train command (U-ViT + CLIP + VQ encoder) and three sample commands
def test_train_command_fine_tunes_the_imported_run_and_sample_reads_it(amused, tmp_path):
    from conftest import ONE_FAST_DEVICE, run_module

    _, _, base = amused
    before = _hashes(base)
    ft = tmp_path / "ft"
    rank = 2  # the default 16 is wider than the tiny model's 24- and 32-wide projections
    result = run_module(
        "muse_jax.train", f"--config=configs/finetune_amused.py:{base}", f"--workdir={ft}",
        f"--config.data.path={_images(tmp_path / 'images')}", "--config.train.num_steps=2",
        "--config.data.batch_size=4", "--config.data.num_workers=0",
        f"--config.finetune.lora.rank={rank}", f"--config.finetune.lora.alpha={2.0 * rank}",
        "--config.optim.lr=1e-2",  # two steps at 3e-4 would move the samples too little to see
        "--config.eval.num_samples=2", "--config.eval.sample_steps=2", env=ONE_FAST_DEVICE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _hashes(base) == before  # the frozen base run: every file bit-identical

    ft_run = runs.open_run(str(ft), "base")
    assert ft_run.config.finetune.init_from == str(base)
    assert ft_run.config.eval.preset == "amused"  # sampled below as the run it starts from
    assert ft_run.config.model.to_dict() == runs.open_run(str(base), "base").config.model.to_dict()
    state = checkpoint.load_state(str(ft / "checkpoints"))
    assert int(state["step"]) == 2
    adapters = flax.traverse_util.flatten_dict(state["params"])
    base_state = runs.open_run(str(base), "base").state()
    flat_base = flax.traverse_util.flatten_dict(base_state["params"])
    chosen = lora.select(base_state["params"], lora.UVIT_TARGETS, ("query", "key", "value"))
    # Only the adapters are saved: A [*in, r] and B [r, *out] of every q/k/v kernel.
    assert {p[:-1] + ("kernel",) for p in adapters} == set(chosen)
    fan_in = {p: int(np.prod(flat_base[p].shape[:n])) for p, n in chosen.items()}
    expected = sum(rank * (f + flat_base[p].size // f) for p, f in fan_in.items())
    assert sum(x.size for x in adapters.values()) == expected
    assert min(np.abs(np.asarray(x)).max() for p, x in adapters.items() if p[-1] == "lora_b") > 1e-3
    ft_bytes, base_bytes = _state_bytes(state), _state_bytes(base_state)
    print(f"adapters: {expected} parameters of the base's {sum(x.size for x in flat_base.values())}; "
          f"state {ft_bytes} bytes (adapters, EMA, Adam moments) against the base's {base_bytes} "
          f"(params, EMA); on disk {_disk_bytes(ft / 'checkpoints')} against "
          f"{_disk_bytes(base / 'checkpoints')} (Orbax's metadata dominates at this size)")
    assert ft_bytes < 0.1 * base_bytes

    grids = {}
    for name, workdir, scale in (("base", base, None), ("off", ft, 0.0), ("on", ft, 1.0)):
        out = tmp_path / f"{name}.png"
        # No --preset: the imported run and its fine-tune both decode with the amused preset
        # (under muse's, scale 0 would not reproduce the base run's grid below).
        args = [f"--workdir={workdir}", "--prompt=a cat", "--prompt=the dog", "--num_images=2",
                "--steps=4", "--seed=3", f"--out={out}"]
        result = run_module("muse_jax.sample", *args,
                            *([f"--lora_scale={scale}"] if scale is not None else []),
                            env=ONE_FAST_DEVICE)
        assert result.returncode == 0, result.stderr[-3000:]
        grids[name] = np.asarray(Image.open(out))
    pixels = 4 * VQ_FACTOR
    assert grids["base"].shape == (2 * pixels, 2 * pixels, 3)  # 2 prompts x 2 images
    np.testing.assert_array_equal(grids["off"], grids["base"])  # scale 0: the base model exactly
    changed = np.mean(np.any(grids["on"] != grids["base"], axis=-1))
    print(f"--lora_scale=1: {changed:.0%} of the pixels differ from the base run's samples")
    assert changed > 0.1
