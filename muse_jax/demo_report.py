"""The demo's report: training curves as a PNG, the samples and edits, each phase's time, as
Markdown (report.md) and as one self-contained HTML page (report.html, pictures inlined), so
a person can look rather than read. `muse_jax.demo` gathers the numbers; this lays them out.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from muse_jax.data import sources


def read_metrics(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """metrics.jsonl -> {name: (steps, values)} for every scalar it logs."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        for name, value in row.items():
            if name != "step" and isinstance(value, (int, float)):
                steps, values = curves.setdefault(name, ([], []))
                steps.append(int(row["step"]))
                values.append(float(value))
    return curves


def plot_curves(curves: dict, oracle: dict[str, tuple[list[int], list[float]]], out: Path) -> None:
    """Three panels: training loss; masked-token accuracy (train, and held-out at mask rate 0.5);
    the shapes oracle on held-out prompts at each scored checkpoint, one line per phrasing, each
    point labelled with its value. The panels share their step axis: the demo scores the last
    checkpoint only, and that point alone would get an axis of its own around it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [("training loss", [("loss", "train")]),
              ("masked-token accuracy", [("accuracy", "train"),
                                         ("eval_accuracy_mask50", "held-out, mask rate 0.5")])]
    for ax, (title, lines) in zip(axes, panels):
        for key, label in lines:
            if key in curves:
                steps, values = curves[key]
                ax.plot(steps, values, marker="o" if len(steps) < 4 else None, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    for label, (steps, values) in oracle.items():
        percent = [100 * v for v in values]
        line, = ax.plot(steps, percent, marker="o", label=label)
        for step, value in zip(steps, percent):
            ax.annotate(f"{value:.1f}", (step, value), textcoords="offset points", xytext=(-6, 5),
                        ha="right", fontsize=8, color=line.get_color())
    ax.set_title("shapes oracle: images exactly right (%)")
    ax.set_xlabel("step")
    ax.set_xlim(axes[0].get_xlim())
    ax.set_ylim(0, 110)  # room for a label above 100 %
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _devices() -> str:
    """What ran the demo: "2 CPU devices, 2 cores" (muse_jax/cpu_devices.py splits a CPU host)."""
    import jax

    from muse_jax import cpu_devices

    devices = jax.devices()
    kinds = f"{len(devices)} {devices[0].platform.upper()} device{'s' * (len(devices) > 1)}"
    return f"{kinds}, {cpu_devices.usable_cores()} cores"


def _time_row(name: str, seconds: float, cpu_seconds: float, reused: bool = False) -> str:
    """A row of the Time table: wall, CPU and their ratio, the cores kept busy."""
    return (f"| {name} | {seconds:.0f} s{' (reused)' if reused else ''} | {cpu_seconds:.0f} s"
            f" | {cpu_seconds / max(seconds, 1e-9):.2f} |")


def _yes(result: dict) -> str:
    return "yes" if result["match"] else "no"


def _by_objects(match_by_objects: dict[str, float]) -> str:
    """"1: 95%, 2: 80%, 3: 23%": exactly right by the number of objects a scene has."""
    return ", ".join(f"{n}: {match:.0%}" for n, match in match_by_objects.items())


# The wordings the demo's oracle scores (`shapes_evals.sample_held_out`'s phrasing), as named
# in the report's table and the legend of curves.png.
WORDINGS = {"canonical": "the canonical wording", "held_out": "phrasings training never used"}


def markdown(timer, options, edit_options, oracles: dict[str, dict], grid: list[dict],
             edited: dict, vq_config, base_config, workdir: str, paste: bool,
             tokenizer_shipped: bool) -> str:
    """report.md's text: `oracles` maps a phrasing ("canonical", "held_out") to its scores."""
    phases = "\n".join(_time_row(p.name, p.seconds, p.cpu_seconds, p.reused)
                       for p in timer.phases)
    total = _time_row("total", sum(p.seconds for p in timer.phases),
                      sum(p.cpu_seconds for p in timer.phases))
    prompts = "\n".join(f"| {g['prompt']} | {_yes(g)} |" for g in grid)
    edit_rows = "\n".join(f"| {name} | {e['before']} | {e['prompt']} | {_yes(e)} |"
                          for name, e in edited.items())
    oracle_rows = "\n".join(
        f"| in {WORDINGS.get(name, name)} | {o['num_samples']} | **{o['match']:.1%}** | "
        f"{_by_objects(o['match_by_objects'])} | {o['color']:.1%} | {o['shape']:.1%} | "
        f"{o['cell']:.1%} |" for name, o in oracles.items())
    phrasing = base_config.data.get("shapes_phrasing", "canonical")
    depth = base_config.model.get("text_depth", 0)
    text_blocks = f" read by {depth} text blocks" if depth else ""
    patch = "{0}x{0}".format(base_config.model.get("patch_size", 1))
    look = ("jittered in size and place" if sources.shapes_jitter(base_config.data)
            else "at their canonical size and place")
    keep = (f"; a re-masked token the model still ranks among its {edit_options.keep} most "
            "likely keeps its value (not in Muse), so what the prompt does not change stays"
            if edit_options.keep else "")
    result = ("the result, which keeps the input's own pixels wherever it kept the input's "
              "tokens (`--paste_unchanged`, not in Muse), and decodes the rest" if paste else
              "the result (what an edit keeps can be no sharper than the middle picture)")
    paste_flag = " --paste_unchanged" if paste else ""
    shipped = ("; the one muse_jax ships, trained by the same recipe: `python -m muse_jax.demo "
               "--train_tokenizer` trains it here" if tokenizer_shipped else "")
    return f"""# muse_jax demo

Shapes tokenizer ({vq_config.train.num_steps} steps{shipped}) and base model
({base_config.train.num_steps} steps, {base_config.model.depth} layers of width
{base_config.model.width}, {patch} tokens a position, MiniLM captions in {phrasing}
wording{text_blocks}), {"the base model" if tokenizer_shipped else "both"} trained on this
machine's CPU under `{workdir}`; objects {look}.

## Held-out prompts: shapes-oracle accuracy

Held-out scenes, one image each, {options.steps} decoding steps, guidance rising linearly to
{options.guidance}, tokens drawn at temperature {options.temperature}; the oracle reads each image
back and checks it shows exactly the scene's objects, also split by how many objects a scene has
(reading which colour and shape go where fails with more objects first); colour, shape and cell
are scored per object.

| captions | prompts | exactly right | by objects in the scene | colour | shape | cell |
|---|---|---|---|---|---|---|
{oracle_rows}

![training curves](curves.png)

![samples](samples.png)

The first of the images scored above in each wording:

| prompt | oracle says the image matches |
|---|---|
{prompts}

## Editing without fine-tuning (Muse 3.3)

Inpainting and outpainting fill the masked tokens in {options.steps} steps; mask-free editing
re-masks {edit_options.mask_rate:.0%} of the tokens {edit_options.iterations} times, each round
filled in {edit_options.steps} steps with top-k {edit_options.top_k}{keep}. Each picture shows
the input, the input as its tokens decode (the tokenizer's drawing, where every edit starts) and
{result}.

| edit | before | prompt | oracle says the result matches |
|---|---|---|---|
{edit_rows}

![inpaint](inpaint.png) ![outpaint](outpaint.png) ![edit](edit.png)

## Your own prompts

The model samples as above with
```
.venv/bin/python -m muse_jax.sample --workdir={workdir}/base_shapes \\
    --guidance={options.guidance} --temperature={options.temperature} --steps={options.steps} \\
    --out=mine.png --prompt="two purple discs in the upper left corner and on the right edge"
... --image=in.png --edit --edit_keep={edit_options.keep}{paste_flag} --prompt=...  # a mask-free edit
```
(`sample` and `evaluate` guide a run and draw its tokens as its config's `eval.guidance` and
`eval.temperature` say unless told otherwise: this small model over-sharpens at the paper's
guidance 4, and at temperature 1 draws unlikely tokens into its shapes).

## Time

On {_devices()}. CPU time is this process's, every thread's; CPU over wall time is how
many cores a phase kept busy. The captions are encoded by a second process, at the lowest CPU
priority beside the tokenizer's phase (its CPU time is not counted here); the encoding phase
waits for it if it is not done.

| phase | wall time | CPU time | cores busy |
|---|---|---|---|
{phases}
{total}
"""


def html(text: str, out: Path) -> str:
    """report.md as one HTML page, its pictures inlined, so it opens anywhere as a single file."""
    import markdown as markdown_lib  # Python-Markdown (a TensorBoard dependency)

    def inline(match: re.Match) -> str:
        path = out / match.group(2)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    body = markdown_lib.markdown(re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", inline, text),
                                 extensions=["tables"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>muse_jax demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}
img{{max-width:100%;vertical-align:top;margin:4px}}</style></head>
<body>{body}</body></html>
"""


def write(out: Path, timer, options, edit_options, oracles: dict, oracle_curves: dict,
          grid: list[dict], edited: dict, vq_config, base_config, workdir: str,
          metrics_path: Path, paste: bool, tokenizer_shipped: bool) -> None:
    """curves.png, report.md, report.html and report.json (every figure, for scripts)."""
    plot_curves(read_metrics(metrics_path), oracle_curves, out / "curves.png")
    text = markdown(timer, options, edit_options, oracles, grid, edited, vq_config, base_config,
                    workdir, paste, tokenizer_shipped)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(html(text, out))
    with open(out / "report.json", "w") as f:
        json.dump({"oracle": oracles, "oracle_curves": oracle_curves, "samples": grid,
                   "edits": edited, "sampling": dataclasses.asdict(options),
                   "editing": {**dataclasses.asdict(edit_options), "paste_unchanged": paste},
                   "phases": [dataclasses.asdict(p) for p in timer.phases]}, f, indent=2,
                  default=lambda x: x.item() if isinstance(x, np.generic) else str(x))
