"""A diffusers aMUSEd LoRA file -> a muse_jax LoRA fine-tune run of an imported aMUSEd run.

    python -m muse_jax.import_diffusers --src=/models/amused-256 --workdir=runs/amused-256
    python -m muse_jax.import_diffusers --lora=lora_out/ --base=runs/amused-256 \\
        --workdir=runs/amused-256-lora [--lora_alpha=32]
    python -m muse_jax.sample --workdir=runs/amused-256-lora --lora_scale=0.8 ...

The file is what diffusers' examples/amused/train_amused.py writes: PEFT's `LoraConfig(r,
lora_alpha, target_modules=[...])` on the UVit2DModel, saved by
`AmusedLoraLoaderMixin.save_lora_weights` as `pytorch_lora_weights.safetensors` (or `.bin`),
`transformer.<module>.lora_A.weight` [r, in] and `transformer.<module>.lora_B.weight` [out, r]
for each adapted Linear, whose output becomes W x + (alpha / r) B A x.

Alpha is not in such a file (save_lora_weights drops the LoraConfig), and diffusers, loading
it, takes alpha = r for every module (scale 1: `get_peft_kwargs` in diffusers/utils/
peft_utils.py); so does this import, unless the file carries PEFT's config as safetensors
metadata (`lora_adapter_metadata`, which diffusers then reads: its `lora_alpha` is used) or
`--lora_alpha` is given (then each module's scale is alpha / r, as PEFT trained it:
train_amused.py's defaults are r 16, alpha 32, so scale 2, which diffusers' loading ignores).

The run written is an ordinary LoRA fine-tune (tasks/finetune.py) of the base run: its
config.json is the base run's with `finetune.init_from` naming it and `finetune.lora` {rank,
alpha, the targets the file covers}; its one checkpoint (step 0) holds the adapters as
`params` and `ema_params` in muse_jax's layout (lora_a = A^T, lora_b = B^T, reshaped to the
kernel's axes: models/lora.py). `sample --lora_scale`, `merge_lora` and a further fine-tune
open it like a trained one. Modules whose ranks differ from the most common one (PEFT's
`rank_pattern`) have their scale folded into lora_b, since a run has one alpha / rank.

Only the modules the U-ViT's LoRA targets cover are taken (models/lora.py UVIT_TARGETS:
to_q, to_k, to_v, to_out.0 of every attention, ff.net.0.proj and ff.net.2 of the transformer
layers). Text-encoder LoRA (muse_jax runs aMUSEd's CLIP frozen, read from its folder), other
modules, DoRA, LoRA biases, rsLoRA and other key layouts stop the import with one line naming
them; so does an adapter whose shape does not fit the base run's kernel.
"""
from __future__ import annotations

import collections
import json
import math
import os
from pathlib import Path

import flax
import flax.linen as nn
import numpy as np

from muse_jax import runs
from muse_jax.errors import CheckpointError, UserError
from muse_jax.models import lora, uvit
from muse_jax.text import hf_import

FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")  # diffusers' names
PREFIX = "transformer."  # AmusedLoraLoaderMixin.transformer_name
SUFFIXES = {"a": ".lora_A.weight", "b": ".lora_B.weight"}
SUPPORTED = ("transformer.<module>.lora_A.weight / .lora_B.weight of to_q, to_k, to_v, to_out.0 "
             "(any attention) and ff.net.0.proj, ff.net.2 (transformer layers)")


def open_file(path: str | os.PathLike) -> tuple[hf_import.Weights, Path]:
    """(the tensors of a LoRA file, or of the diffusers LoRA file in a folder; its path)."""
    path = Path(path).expanduser()
    if path.is_dir():
        file = next((path / f for f in FILES if (path / f).is_file()), None)
        if file is None:
            raise CheckpointError(f"--lora folder '{path}' holds no {' or '.join(FILES)}")
        path = file
    elif not path.is_file():
        raise CheckpointError(f"--lora '{path}' does not exist; expected {FILES[0]} (as "
                              f"AmusedLoraLoaderMixin.save_lora_weights writes it) or its folder")
    return hf_import.Weights(path.parent, ((path.name, path.name + ".index.json"),)), path


def peft_config(weights: hf_import.Weights, where: Path) -> dict:
    """The transformer's PEFT LoraConfig fields from the file's metadata ({} when it has none,
    as AmusedLoraLoaderMixin's files do), refusing what a single alpha / r cannot express."""
    raw = weights.metadata().get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        meta = {k[len(PREFIX):]: v for k, v in json.loads(raw).items() if k.startswith(PREFIX)}
    except (json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{where}: its lora_adapter_metadata is not a JSON object: {e}") from None
    for key in ("use_rslora", "use_dora", "alpha_pattern"):
        if meta.get(key):
            raise CheckpointError(f"{where}: its LoraConfig sets {key}={meta[key]!r}, which the "
                                  f"import does not support (plain LoRA, one lora_alpha)")
    return meta


def _pairs(keys, kernels: dict[str, tuple], where: Path) -> dict[str, dict[str, str]]:
    """{diffusers module: {"a": key, "b": key}} of the file's keys, or one line naming those
    that are not an A/B pair of a module in `kernels` (module -> its kernel's params path)."""
    text = sorted(k for k in keys if k.startswith("text_encoder."))
    if text:
        raise UserError(f"{where}: text-encoder LoRA ({len(text)} tensors, e.g. {text[0]}) is not "
                        f"supported: muse_jax runs aMUSEd's CLIP text encoder frozen; save the "
                        f"transformer's LoRA alone (transformer_lora_layers only)")
    pairs, unknown = collections.defaultdict(dict), []
    for key in keys:
        part = next((p for p, s in SUFFIXES.items() if key.startswith(PREFIX) and key.endswith(s)
                     and key[len(PREFIX):-len(s)] in kernels), None)
        if part is None:
            unknown.append(key)
        else:
            pairs[key[len(PREFIX):-len(SUFFIXES[part])]][part] = key
    unknown += [key for pair in pairs.values() if len(pair) == 1 for key in pair.values()]
    if unknown:
        unknown = sorted(unknown)
        raise CheckpointError(f"{where}: {len(unknown)} tensor(s) that no U-ViT LoRA target takes "
                              f"(or without their A/B partner): {', '.join(unknown[:4])}"
                              f"{', ...' if len(unknown) > 4 else ''}; supported: {SUPPORTED}")
    if not pairs:
        raise CheckpointError(f"{where} holds no LoRA tensors; expected {SUPPORTED}")
    return dict(pairs)


def adapters_from_diffusers(weights: hf_import.Weights, net: uvit.UVitConfig, where: Path,
                            alpha: float | None = None):
    """(adapters tree, rank, alpha, target names) of the LoRA file `weights` for a U-ViT of
    `net`: the adapters as models/lora.py's `apply` takes them at scale alpha / rank.

    `alpha` None: the file's metadata's lora_alpha, else alpha = r per module (diffusers'
    reading of a file without alpha); see the module docstring.
    """
    tree = nn.unbox(uvit.params_shape(uvit.UVit2D(net)))
    shapes = flax.traverse_util.flatten_dict(tree)
    chosen = lora.select(tree, lora.UVIT_TARGETS, tuple(lora.UVIT_TARGETS))
    names = uvit.diffusers_names(net)
    kernels = {names[path].removesuffix(".weight"): path for path in chosen}
    pairs = _pairs(list(weights.keys()), kernels, where)
    meta = peft_config(weights, where)
    alpha = meta.get("lora_alpha") if alpha is None else alpha
    flat, ranks = {}, {}
    for module, keys in sorted(pairs.items()):
        path, in_axes = kernels[module], chosen[kernels[module]]
        shape = shapes[path].shape
        a, b = weights.get(keys["a"]), weights.get(keys["b"])
        r = a.shape[0]
        a, b = a.reshape(r, -1), b.reshape(b.shape[0], -1)  # a 1x1 conv's [r, in, 1, 1] too
        n_in, n_out = math.prod(shape[:in_axes]), math.prod(shape[in_axes:])
        if a.shape[1] != n_in or b.shape != (n_out, r):
            raise CheckpointError(f"{where}: {module} has lora_A {a.shape} and lora_B {b.shape}; "
                                  f"the base run's kernel {'/'.join(path)} {shape} takes "
                                  f"[r, {n_in}] and [{n_out}, r]")
        flat[path[:-1] + ("lora_a",)] = a.T.reshape(*shape[:in_axes], r)
        flat[path[:-1] + ("lora_b",)] = b.T.reshape(r, *shape[in_axes:])
        ranks[path] = r
    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    run_alpha = float(rank if alpha is None else alpha)
    for path, r in ranks.items():  # PEFT's rank_pattern: this module's own scale, folded into B
        if r != rank:
            module_alpha = r if alpha is None else alpha
            key = path[:-1] + ("lora_b",)
            flat[key] = flat[key] * np.float32(lora.scale(module_alpha, r) /
                                                 lora.scale(run_alpha, rank))
    targets = tuple(n for n in lora.UVIT_TARGETS
                    if set(lora.select(tree, lora.UVIT_TARGETS, (n,))) & set(ranks))
    return flax.traverse_util.unflatten_dict(flat), rank, run_alpha, targets


def import_lora(lora_file: str | os.PathLike, base: str | os.PathLike,
                workdir: str | os.PathLike, alpha: float | None = None) -> Path:
    """Writes the LoRA fine-tune run of `lora_file` on the imported run `base` into `workdir`
    (see the module docstring); returns `workdir`."""
    workdir = Path(workdir).expanduser()
    weights, where = open_file(lora_file)
    run = runs.open_run(str(base), "base", "--base")
    kind = run.config.model.get("kind", "muse")
    if kind != "uvit":
        raise UserError(f"--base {base} is a model.kind {kind!r} run; a diffusers aMUSEd LoRA "
                        f"needs the run imported from the aMUSEd folder it was trained on "
                        f"(python -m muse_jax.import_diffusers --src=FOLDER --workdir=RUN)")
    if (workdir / "config.json").exists():
        raise CheckpointError(f"{workdir} already holds a run (config.json); choose a new "
                              f"--workdir")
    if alpha is not None and not alpha > 0:
        raise UserError(f"--lora_alpha must be > 0, got {alpha}")
    net = uvit.UVitConfig.from_diffusers(json.loads(run.config.model.diffusers))
    adapters, rank, alpha, targets = adapters_from_diffusers(weights, net, where, alpha)
    config = run.config.copy_and_resolve_references()
    with config.unlocked():
        config.finetune.init_from = run.path
        config.finetune.lora.rank, config.finetune.lora.alpha = rank, alpha
        config.finetune.lora.dropout, config.finetune.lora.targets = 0.0, targets
    runs.save_run(workdir, config, {"step": np.zeros((), np.int32),
                                    "params": adapters, "ema_params": adapters})
    return workdir
