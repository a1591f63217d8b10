"""muse_jax's modules import only downward, and never in a circle.

Every module under muse_jax/ is parsed with `ast` (nothing is imported); every `import` and
`from ... import` anywhere in it counts, at module level or inside a function, class or `if`.
An edge A -> B means A imports B, where B is the most specific muse_jax module named
(`from muse_jax.data import shards` -> muse_jax.data.shards; `from muse_jax.text import
create_encoder` -> muse_jax.text, the package's __init__).

The rule, with LAYERS below giving each module its layer:
  * A may import B only if B's layer is A's or a lower one;
  * no module imports a CLI module (one with `if __name__ == "__main__":`, all of them at the
    top layer): a CLI is command code only, and whatever another module needs from it belongs
    in a library module below it. A CLI may import anything that is not a CLI, so
    muse_jax/data/precompute_tokens.py, a CLI, may import muse_jax.tasks although data/ sits
    below tasks/: a CLI's layer is the top one wherever its file lives;
  * the modules' import graph has no cycle (function-local imports hide one, they don't break it).
Edges that break the rule today, in modules being refactored, are listed in KNOWN_VIOLATIONS;
the test fails on any other, and on a listed one that has gone (so the list only shrinks).

    python tests/test_layers.py    # each module's layer and imports, and what breaks the rule
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "muse_jax"

FOUNDATION, MODELS, DATA, TEXT, TASKS, RUN, CLI = range(7)
LAYER_NAMES = ["foundation", "models", "data", "text", "tasks", "train/inference", "CLI"]
# A module's layer is that of its longest prefix here: one line a module or package.
LAYERS = {
    "muse_jax": FOUNDATION,  # the package __init__ (environment settings only)
    "muse_jax.errors": FOUNDATION,
    "muse_jax.config": FOUNDATION,
    "muse_jax.images": FOUNDATION,
    "muse_jax.grid_png": FOUNDATION,
    "muse_jax.parallel": FOUNDATION,
    "muse_jax.masking": FOUNDATION,
    "muse_jax.sampling": FOUNDATION,
    "muse_jax.checkpoint": FOUNDATION,
    "muse_jax.checksums": FOUNDATION,
    "muse_jax.metrics": FOUNDATION,
    "muse_jax.optimizers": FOUNDATION,
    "muse_jax.runs": FOUNDATION,  # opening a run's directory: config.json + checkpoint only
    "muse_jax.workdir_lock": FOUNDATION,  # one training run a workdir (fcntl.flock)
    "muse_jax.host_memory": FOUNDATION,  # glibc malloc settings for XLA:CPU
    "muse_jax.cpu_devices": FOUNDATION,  # one JAX device a core on a CPU host
    "muse_jax.distributed": FOUNDATION,  # joining a multi-process run: its flags, the join
    "muse_jax.models": MODELS,
    "muse_jax.data": DATA,
    "muse_jax.text": TEXT,
    "muse_jax.tasks": TASKS,
    "muse_jax.plan": RUN,
    "muse_jax.training": RUN,
    "muse_jax.inference": RUN,
    "muse_jax.diffusers_import": RUN,  # a diffusers aMUSEd folder -> run directories
    "muse_jax.diffusers_lora": RUN,  # a diffusers aMUSEd LoRA file -> a LoRA fine-tune run
    "muse_jax.shapes_evals": RUN,
    "muse_jax.quality": RUN,  # FID, CLIP score, tokenizer metrics: loops over loaded runs
    "muse_jax.sampling_flags": RUN,  # the CLIs' shared flags: absl definitions, no command
    "muse_jax.demo_report": RUN,  # the demo's report: curves, Markdown and HTML
    "muse_jax.shipped_tokenizer": RUN,  # the shapes tokenizer the demo installs
    # CLIs: exactly the modules with `if __name__ == "__main__":` (checked below).
    "muse_jax.train": CLI,
    "muse_jax.sample": CLI,
    "muse_jax.evaluate": CLI,
    "muse_jax.demo": CLI,
    "muse_jax.import_diffusers": CLI,
    "muse_jax.config_docs": CLI,
    "muse_jax.merge_lora": CLI,
    "muse_jax.ship_tokenizer": CLI,
    "muse_jax.data.convert": CLI,
    "muse_jax.data.precompute_tokens": CLI,
    "muse_jax.text.precompute": CLI,
}

# (importer, imported) edges allowed to break the rule: none now. An entry whose edge has gone
# fails the test, so the set can only shrink.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_cli(tree: ast.Module) -> bool:
    """Has a module-level `if __name__ == "__main__":`."""
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [node.test.left, *node.test.comparators]
            if (any(isinstance(n, ast.Name) and n.id == "__name__" for n in names)
                    and any(isinstance(n, ast.Constant) and n.value == "__main__" for n in names)):
                return True
    return False


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The muse_jax modules `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` names the submodule when there is one, else pkg itself.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a non-module c: a.b
                target = target.rpartition(".")[0]
            if target.startswith("muse_jax") and target and target != name:
                found.add(target)
    return found


def layer(name: str) -> int:
    prefix = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def violations(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(importer, imported) pairs that import upward or import a CLI."""
    return {(a, b) for a, targets in edges.items() for b in targets
            if layer(b) > layer(a) or layer(b) == CLI}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def describe(edge: tuple[str, str]) -> str:
    a, b = edge
    why = "imports a CLI module" if layer(b) == CLI else "imports upward"
    return f"{a} ({LAYER_NAMES[layer(a)]}) -> {b} ({LAYER_NAMES[layer(b)]}): {why}"


def test_every_module_has_a_layer_and_the_clis_are_the_main_modules():
    mods = modules()
    clis = {name for name, path in mods.items() if is_cli(ast.parse(path.read_text()))}
    listed = {name for name in LAYERS if LAYERS[name] == CLI}
    assert clis == listed, (f"modules with `if __name__ == '__main__'` not listed as CLI: "
                            f"{sorted(clis - listed)}; listed as CLI without one: "
                            f"{sorted(listed - clis)}")
    unknown = sorted(set(LAYERS) - set(mods))
    assert not unknown, f"LAYERS names no such module: {unknown}"


def test_imports_go_downward_only():
    found = violations(graph())
    new = sorted(found - KNOWN_VIOLATIONS)
    assert not new, ("layer rule broken (see tests/test_layers.py):\n"
                     + "\n".join(map(describe, new)))
    gone = sorted(KNOWN_VIOLATIONS - found)
    assert not gone, f"no longer imported, delete from KNOWN_VIOLATIONS: {gone}"


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles among muse_jax modules: " + "; ".join(
        " <-> ".join(c) for c in found)


def test_the_checker_sees_local_relative_and_upward_imports(tmp_path):
    """What the rule is checked on: function-local and relative imports, CLIs, cycles."""
    known = {"muse_jax.data", "muse_jax.data.a", "muse_jax.data.b", "muse_jax.tasks"}
    path = tmp_path / "a.py"
    path.write_text("import os\nfrom . import b\ndef f():\n    from muse_jax import tasks\n"
                    "    import muse_jax.data.b.thing\n")
    assert imports("muse_jax.data.a", path, known) == {"muse_jax.data.b", "muse_jax.tasks"}
    upward = {("muse_jax.data.a", "muse_jax.tasks")}
    assert violations({"muse_jax.data.a": {"muse_jax.tasks"}}) == upward
    assert violations({"muse_jax.tasks.base": {"muse_jax.data.precompute_tokens"}})  # a CLI
    assert not violations({"muse_jax.data.precompute_tokens": {"muse_jax.tasks.vqgan"}})
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert is_cli(ast.parse("if __name__ == '__main__':\n    main()\n"))
    assert not is_cli(ast.parse("def f():\n    if __name__ == '__main__':\n        pass\n"))


def main() -> None:
    edges = graph()
    for name in sorted(edges, key=lambda n: (layer(n), n)):
        targets = ", ".join(sorted(edges[name])) or "-"
        print(f"[{LAYER_NAMES[layer(name)]}] {name} -> {targets}")
    found = violations(edges)
    print(f"\n{len(found)} edges break the rule ({len(found & KNOWN_VIOLATIONS)} known):")
    for edge in sorted(found):
        print(("  known  " if edge in KNOWN_VIOLATIONS else "  NEW    ") + describe(edge))
    for cycle in cycles(edges):
        print("cycle: " + " <-> ".join(cycle))


if __name__ == "__main__":
    sys.exit(main())
