"""The dry run: what a config's training costs per device on a mesh, before paying for a pod.

`python -m muse_jax.train --config=... --dry_run --num_devices=N` builds the train state with
`jax.eval_shape` (nothing is allocated), places it with the logical-axis rules on the config's
mesh and on a few candidate meshes, and prints parameter counts and the bytes one device holds:
parameters, optimiser state, EMA, gradients and activations. Activations are an analytic
estimate for the transformer stages (every tensor a block saves for the backward pass,
counted by hand below), not a compiled measurement: compiling a paper-scale step for 256
simulated CPU devices takes far longer than the dry run should, and XLA:CPU's buffer plan
says little about a TPU's.

Every device of a mesh holds one equal shard of each array (the rules only split dimensions
the mesh axes divide), so bytes per device are sums of shard sizes.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from muse_jax import parallel, runs

STATE_NAMES = {"params": "parameters", "opt_state": "optimiser state",
               "ema_params": "EMA parameters", "disc_params": "discriminator parameters",
               "disc_opt_state": "discriminator optimiser state"}
HEADROOM = 0.8  # plan to fill at most this share of a device: XLA needs workspace too


def abstract_state(task) -> Any:
    """The boxed (logically partitioned) abstract train state; shapes only."""
    with nn.logical_axis_rules(parallel.LOGICAL_AXIS_RULES):
        return jax.eval_shape(task.init_state, jax.random.key(0))


def shard_bytes(abstract: Any, shardings: Any) -> int:
    """Bytes of one device's shards of every array in `abstract` (placed by `shardings`)."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        total += math.prod(sharding.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
    return total


def count(tree: Any) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def module_paths(params: dict) -> list[str]:
    """Top-level parameter modules, and in place of a transformer trunk (a module holding
    blocks_0, blocks_1, ...) its parts, as "trunk/blocks_0": the rows worth a line each."""
    out = []
    for name, value in params.items():
        if isinstance(value, dict) and any(re.fullmatch(r"blocks_\d+", k) for k in value):
            out += [f"{name}/{child}" for child in value]
        else:
            out.append(name)
    return out


def subtree(params: dict, path: str) -> Any:
    for key in path.split("/"):
        params = params[key]
    return params


def group_params(params: dict) -> list[tuple[str, list[str]]]:
    """`module_paths`; numbered runs (block_0, block_1, ...) become one row."""
    rows: list[tuple[str, list[str]]] = []
    runs: dict[str, list[str]] = {}
    for name in module_paths(params):
        match = re.fullmatch(r"(.*?)_?(\d+)", name)
        if match:
            prefix = match.group(1)
            if prefix not in runs:
                runs[prefix] = []
                rows.append((prefix, runs[prefix]))
            runs[prefix].append(name)
        else:
            rows.append((name, [name]))
    out = []
    for label, names in rows:
        if len(names) > 1 or names[0] != label:
            names = sorted(names, key=lambda n: int(re.search(r"(\d+)$", n).group(1)))
            label = f"{names[0]}..{names[-1]}" if len(names) > 1 else names[0]
        out.append((label, names))
    return out


# ------------------------------------------------------------------ activations
def _block_elements(width, mlp, heads, span, context):
    """Per token of one block: (activation elements, float32 attention-weight elements, mask bytes).

    Saved for the backward pass: each LayerNorm output, q/k/v, the attention output and its
    projection, the MLP's hidden before and after the GELU, the residual input. The attention
    logits and weights (`heads x span` a token, plus `heads x context` for cross-attention)
    are float32, the weights again in the compute dtype.
    """
    elements = (6 * width) + (4 * width if context else 0) + (2 * width + 2 * mlp) + width
    weights = heads * (span + context)
    masks = 3 * width + mlp  # dropout keep-masks, one byte an element
    return elements, weights, masks


def transformer_activation_bytes(*, batch, tokens, width, mlp, heads, depth, span, context,
                                 vocab, dtype_bytes, remat, dropout) -> int:
    """Peak bytes of activations kept for the backward pass of one device's micro-batch."""
    elements, weights, masks = _block_elements(width, mlp, heads, span, context)
    per_token = elements * dtype_bytes + weights * (8 + dtype_bytes) + (masks if dropout else 0)
    per_block = batch * (tokens * per_token + 2 * context * width * dtype_bytes)  # + context k/v
    if remat:  # each block's input is kept; one block is recomputed at a time
        blocks = depth * batch * tokens * width * dtype_bytes + per_block
    else:
        blocks = depth * per_block
    logits = 3 * batch * tokens * vocab * 4  # float32 logits, log-softmax and their gradient
    return blocks + logits + batch * context * width * dtype_bytes


def activation_estimate(config, batch_per_device: float) -> tuple[int | None, str]:
    """(bytes, how) for the stage's training step; (None, why not) where no estimate exists."""
    m = config.model
    if config.stage not in ("base", "sr"):
        return None, f"no analytic estimate for the {config.stage} stage"
    accum = max(int(config.optim.get("accum_steps", 1)), 1)
    batch = batch_per_device / accum
    dtype_bytes = jnp.dtype(m.get("dtype", "float32")).itemsize
    how = (f"analytic: {batch:g} examples/device/micro-batch x saved tensors per block, "
           f"{'remat' if m.get('remat') else 'no remat'}, {jnp.dtype(m.get('dtype')).name}")
    common = dict(width=m.width, mlp=m.mlp_dim, heads=m.num_heads, dtype_bytes=dtype_bytes,
                  remat=bool(m.get("remat")), dropout=m.get("dropout", 0) > 0)
    text = config.text.max_length
    if config.stage == "base":
        n = m.grid_size ** 2
        return transformer_activation_bytes(batch=batch, tokens=n, depth=m.depth, span=n,
                                            context=text, vocab=m.codebook_size,
                                            **common), how
    if config.stage == "sr" and "low_res_grid_size" in m:
        low = m.low_res_grid_size ** 2
        high = transformer_activation_bytes(batch=batch, tokens=m.grid_size ** 2, depth=m.depth,
                                            span=m.get("attention_window", m.grid_size) ** 2,
                                            context=low + text, vocab=m.codebook_size, **common)
        low_stack = transformer_activation_bytes(batch=batch, tokens=low, depth=m.low_res_depth,
                                                 span=low, context=0, vocab=0, **common)
        return high + low_stack, how + " (multi-axis attention spans window^2 tokens)"
    return None, f"no analytic estimate for the {config.stage} stage"


# ------------------------------------------------------------------ frozen models
def frozen_models(config) -> dict[str, tuple[Any, str]]:
    """Boxed abstract params of the frozen models a step of this stage holds: {key: (tree, label)}.

    None where the config precomputes their outputs. The text encoder is read from
    `text.path`'s config.json, or assumed T5-XXL (what Muse uses) when a 4096-wide T5 has no
    path yet; the tokenizer from `tokenizer.workdir`'s config.json or the reference VQGAN.
    """
    from muse_jax import config as config_lib
    from muse_jax import tasks

    out: dict[str, tuple[Any, str]] = {}
    if "tokenizer" not in config:
        return out
    if not config.data.get("train_text_embeddings") and config.text.encoder == "t5":
        from muse_jax.text import hf_import, t5

        path = config.text.path
        if path and os.path.isfile(os.path.join(path, "config.json")):
            t5_config = t5.T5Config.from_hf(hf_import.read_config(path))
            name = os.path.basename(os.path.normpath(path))
        elif config.model.text_dim == t5.T5_XXL.d_model:
            t5_config, name = t5.T5_XXL, "T5-XXL assumed"
        else:
            t5_config = None
        if t5_config is not None:
            with nn.logical_axis_rules(parallel.LOGICAL_AXIS_RULES):
                tree = jax.eval_shape(t5.init_fn(t5_config, jnp.dtype(config.text.dtype)))
            out["text_encoder"] = (tree, f"frozen text encoder ({name})")
    if not config.data.get("train_tokens"):
        try:  # before the tokenizer is trained, the dry run sizes the reference one
            vq_config = runs.open_run(config.tokenizer.workdir, "vqgan", "tokenizer.workdir").config
        except config_lib.ConfigError:
            vq_config = config_lib.reference("vqgan")
        params = abstract_state(tasks.create(vq_config)).params
        out["tokenizer"] = (nn.unbox(params), "frozen tokenizer (VQGAN, replicated)")
    return out


def pretrained_model(task) -> dict[str, tuple[Any, str]]:
    """{"pretrained": (boxed abstract params, label)} for a LoRA fine-tune, whose state holds
    the adapters only (tasks/finetune.py) and whose steps hold the model's weights frozen;
    {} for any other run (a full fine-tune's weights are its state)."""
    from muse_jax.tasks import finetune

    if not finetune.uses_lora(task.config):
        return {}
    with nn.logical_axis_rules(parallel.LOGICAL_AXIS_RULES):
        tree = jax.eval_shape(task.training.init_params, jax.random.key(0))
    return {"pretrained": (tree, "frozen pretrained weights (LoRA fine-tune)")}


# ------------------------------------------------------------------ meshes
def candidate_meshes(num_devices: int, config) -> list[dict]:
    """(data, fsdp, tensor) splits worth considering: powers of two for fsdp and tensor."""
    out = []
    heads, mlp = config.model.get("num_heads", 1), config.model.get("mlp_dim", 1)
    tensor = 1
    while tensor <= min(8, num_devices):
        divides = tensor == 1 or (heads % tensor == 0 and mlp % tensor == 0)
        if num_devices % tensor == 0 and divides:
            fsdp = 1
            while fsdp * tensor <= num_devices:
                if num_devices % (fsdp * tensor) == 0:
                    out.append({"data": num_devices // (fsdp * tensor), "fsdp": fsdp,
                                "tensor": tensor})
                fsdp *= 2
        tensor *= 2
    return out


def mesh_report(config, boxed, frozen, mesh) -> dict:
    """Per-device bytes of the state, gradients, frozen models and activations on `mesh`."""
    shardings = parallel.logical_shardings(boxed, mesh)
    state = nn.unbox(boxed)
    parts = {}
    for field in dataclasses.fields(state):
        value = getattr(state, field.name)
        if jax.tree.leaves(value) and field.name != "step":
            parts[field.name] = shard_bytes(value, getattr(shardings, field.name))
    for key, (tree, _) in frozen.items():
        parts[key] = shard_bytes(nn.unbox(tree), parallel.logical_shardings(tree, mesh))
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_per_device = config.data.batch_size / shards
    activations, how = activation_estimate(config, batch_per_device)
    gradients = parts.get("params", 0)
    total = sum(parts.values()) + gradients + (activations or 0)
    return {"mesh": dict(mesh.shape), "per_device_bytes": parts, "gradients": gradients,
            "activations": activations, "activations_how": how, "total": total,
            "batch_per_device": batch_per_device}


def plan(config, devices, memory_gib: float) -> dict:
    """The dry-run report: parameters by module, per-device bytes on the config's mesh, and
    the candidate meshes ranked, with the one recommended for `memory_gib` per device."""
    from muse_jax import tasks

    task = tasks.create(config)
    task.check_config()
    boxed = abstract_state(task)
    frozen = {**frozen_models(config), **pretrained_model(task)}
    state = nn.unbox(boxed)
    rows = [(label, sum(count(subtree(state.params, n)) for n in names), len(names))
            for label, names in group_params(state.params)]
    report = {"stage": config.stage, "num_devices": len(devices), "memory_gib": memory_gib,
              "params": {label: n for label, n, _ in rows},
              "param_rows": [{"name": label, "count": n, "modules": k} for label, n, k in rows]}
    report["params"]["total"] = count(state.params)
    if "pretrained" in frozen:
        report["pretrained_params"] = count(nn.unbox(frozen["pretrained"][0]))
    if getattr(state, "disc_params", None):
        report["discriminator_params"] = count(state.disc_params)
    report["optimizer"] = config.optim.name

    mesh = parallel.create_mesh(config.mesh, devices)
    report.update(mesh_report(config, boxed, frozen, mesh))
    report["frozen_labels"] = {key: label for key, (_, label) in frozen.items()}
    parts = report["per_device_bytes"]
    parts["whole_state"] = sum(v for k, v in parts.items() if k not in frozen)
    parts["optimizer_state"] = parts.get("opt_state", 0)

    budget = memory_gib * 2 ** 30 * HEADROOM
    candidates = []
    for shape in candidate_meshes(len(devices), config):
        if config.data.batch_size % (shape["data"] * shape["fsdp"]):
            continue
        r = mesh_report(config, boxed, frozen, parallel.create_mesh(shape, devices))
        candidates.append({**shape, "total": r["total"], "fits": r["total"] <= budget})
    # Least sharding that fits: data parallelism needs one gradient all-reduce a step, fsdp
    # adds an all-gather of every layer's weights, tensor parallelism collectives inside layers.
    candidates.sort(key=lambda c: (not c["fits"], c["tensor"],
                                   c["fsdp"] if c["fits"] else c["total"]))
    report["candidates"] = candidates
    report["recommended_mesh"] = ({k: candidates[0][k] for k in ("data", "fsdp", "tensor")}
                                  if candidates else None)
    report["warnings"] = _warnings(config, report)
    return report


def _warnings(config, report) -> list[str]:
    out = []
    shards = report["mesh"]["data"] * report["mesh"]["fsdp"]
    for key in ("batch_size", "eval_batch_size"):
        value = config.data[key]
        if value % shards:
            out.append(f"data.{key} {value} is not divisible by data x fsdp = {shards}: "
                       f"set --config.data.{key}={math.lcm(value, shards)} or change the mesh")
    best = report["candidates"][0] if report["candidates"] else None
    if best and not best["fits"]:
        out.append(f"no mesh fits {report['memory_gib']:g} GiB a device: lower data.batch_size, "
                   f"raise optim.accum_steps or use more devices")
    return out


# ------------------------------------------------------------------ printing
def _num(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2 ** 30:.2f}"


def format_table(report: dict, title: str) -> str:
    devices = f"{report['num_devices']} device{'s' * (report['num_devices'] != 1)}"
    lines = [f"dry run: {title}, stage {report['stage']}, {devices}, mesh {_mesh(report['mesh'])}",
             ""]
    lines.append(f"{'parameters':<46}{'count':>10}")
    for row in report["param_rows"]:
        label = row["name"] if row["modules"] == 1 else \
            f"{row['name']} ({row['modules']} x {_num(row['count'] / row['modules'])})"
        lines.append(f"  {label:<44}{_num(row['count']):>10}")
    lines.append(f"  {'total':<44}{_num(report['params']['total']):>10}")
    if "pretrained_params" in report:
        lines.append(f"  {'(LoRA adapters; frozen pretrained weights)':<44}"
                     f"{_num(report['pretrained_params']):>10}")
    if "discriminator_params" in report:
        lines.append(f"  {'discriminator':<44}{_num(report['discriminator_params']):>10}")
    lines += ["", f"{'per device':<46}{'GiB':>10}"]
    parts = report["per_device_bytes"]
    for key, name in STATE_NAMES.items():
        if key in parts:
            suffix = f" ({report['optimizer']})" if key == "opt_state" else ""
            lines.append(f"  {name + suffix:<44}{_gib(parts[key]):>10}")
    for key, label in report["frozen_labels"].items():
        lines.append(f"  {label:<44}{_gib(parts[key]):>10}")
    lines.append(f"  {'gradients (during the step)':<44}{_gib(report['gradients']):>10}")
    lines.append(f"  {'activations (estimate, see below)':<44}{_gib(report['activations']):>10}")
    lines.append(f"  {'total':<44}{_gib(report['total']):>10}")
    lines.append(f"  activations: {report['activations_how']}")
    lines.append("  not counted: the frozen models' activations (forward only, freed as they "
                 "go), XLA workspace")
    lines += ["", f"meshes for {devices} (GiB a device; fits = under "
                  f"{HEADROOM:.0%} of {report['memory_gib']:g} GiB)"]
    for c in report["candidates"][:8]:
        mark = "  <- recommended" if c is report["candidates"][0] else ""
        lines.append(f"  {_mesh(c):<40}{_gib(c['total']):>10}  {'fits' if c['fits'] else 'too big'}"
                     f"{mark}")
    if report["recommended_mesh"]:
        m = report["recommended_mesh"]
        lines.append(f"  use: --config.mesh.data={m['data']} --config.mesh.fsdp={m['fsdp']} "
                     f"--config.mesh.tensor={m['tensor']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def _mesh(m: dict) -> str:
    return f"data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']}"
