"""XLA options for programs that run once, such as the initial train state.

On a CPU, XLA's LLVM backend at its default optimisation level spends seconds on such programs
(a threefry hash for every parameter) that then run for milliseconds: the tiny shapes
tokenizer's initial state compiled in 7.75 s at the default level and in 2.03 s at level 0
(`benchmarks/step_compile.py`, 2026-12-02, 2-core CPU). Steps that run thousands of times keep the default.
TPUs and GPUs compile these programs quickly and get no options.
"""
from __future__ import annotations

import jax


def run_once() -> dict | None:
    """`compiler_options` for `jax.jit` of a program that runs once or rarely."""
    if jax.default_backend() == "cpu":
        return {"xla_backend_optimization_level": 0}
    return None
