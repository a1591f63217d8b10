"""One JAX device per CPU core when JAX computes on the host's CPU: data parallel over cores.

XLA:CPU gives each device one stream of programs and splits an op over the cores only where
the op is big enough: the shapes tokenizer's train step (16-32 channel convolutions on 64 px
images, batch 16) kept 1.35 of 2 cores busy on one device. Split into one device a core, the
train loop's mesh gives each core its own share of the batch: 1.77 cores busy. Measured on
the 2-core AMD EPYC machine of this project, 2026-12-06 (`benchmarks/xla_flags.py
--workload=demo_tokenizer --steps=20,220 --sets=default,per_core`, fresh processes): the
tokenizer's step 0.429 -> 0.258 s; the demo's base step 0.237 -> 0.228 s (its matmuls already
fill both cores); `make demo` 691 -> 635 s wall, the tokenizer phase 211 -> 155 s, the others
within a few seconds (a fresh clone at 1939885: 616 s). More devices than cores lose: 4 on the
2 cores took 107 s for 220 tokenizer steps (2: 81 s, 1: 120 s) and 92 s for 220 base steps (2:
78 s). Programs that are not sharded (the sampler, the text encoder) run on the first device
with every core, as before.

XLA:CPU's library flags stay at their defaults (YNNPACK for single dots). Measured 2026-12-06 on
the same machine with the train loop's own step rate (`benchmarks/xla_flags.py
--workload=demo_base --steps=180 --rounds=3 --sets=per_core,onednn`): oneDNN took the base
step from 0.265 to 0.238 s in one run and from 0.235 to 0.233 s in the next, within the
machine's noise (the loop's reported rate varies by +-15 % within a run). Single rounds of 20
and 120 steps found nothing better either: YNNPACK fusions of dots, elementwise ops and
reductions 0.37 s against 0.22 s, greedy XNNPACK subgraphs 0.30 s, Eigen dots 0.21 s, fast math
0.25 s. On the tokenizer YNNPACK convolutions looked faster in one round (0.335 against 0.376 s)
but not in three (`--workload=demo_tokenizer --steps=180 --rounds=3 --sets=per_core,ynn_conv`,
the same day: 0.329 against 0.314 s, medians of the loop's own rate). Eigen dots, over three
rounds (`--workload=demo_base --steps=180 --rounds=3 --sets=per_core,eigen_dot`, 2026-12-06
15:00): 0.317 against 0.261 s, 1.22x slower, though YNNPACK's fused dots allocate their
intermediate buffers on every call (perf, the demo's base step on fixed batches: YNNPACK's dot
kernel 47 % of the samples, glibc's `_int_malloc` 8.5 %, called for slinky's 128-256 KiB
buffers among others, and the cores 15 % idle).

The count is the cores this process may use rounded down to a power of two, at most 8, so that
the CPU configs' batches (multiples of 8) divide over it; more than 2 is not measured here.
`JAX_NUM_CPU_DEVICES=N`, or `--xla_force_host_platform_device_count=N` in `XLA_FLAGS`, chooses
another count (1: no split), and a host with a TPU or GPU plugin is left as it is: its CPU
devices only hold host arrays.
"""
from __future__ import annotations

import importlib.util
import os
import sys

MAX_DEVICES = 8
# Accelerator plugins: libtpu (jax[tpu]) and the jax_plugins namespace (jax[cuda12], ROCm).
_ACCELERATOR_MODULES = ("libtpu", "jax_plugins")
HINT = "on a CPU, JAX_NUM_CPU_DEVICES=1 runs on one device (muse_jax/cpu_devices.py)"


def usable_cores() -> int:
    """The cores this process may use (its CPU affinity), which may be fewer than the host's."""
    return len(os.sched_getaffinity(0))


def count(cores: int) -> int:
    """Devices for `cores` cores: the largest power of two <= cores, at most MAX_DEVICES."""
    n = 1
    while n * 2 <= min(cores, MAX_DEVICES):
        n *= 2
    return n


def _chosen(environ) -> bool:
    return ("JAX_NUM_CPU_DEVICES" in environ
            or "xla_force_host_platform_device_count" in environ.get("XLA_FLAGS", ""))


def _computes_on_cpu(environ) -> bool:
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(m) for m in _ACCELERATOR_MODULES)


def devices_for(environ, cores: int) -> int | None:
    """The CPU device count to set for a process with `environ` and `cores` usable cores: None
    where one is chosen already, JAX will compute on an accelerator, or one core gives one."""
    if _chosen(environ) or not _computes_on_cpu(environ):
        return None
    devices = count(cores)
    return devices if devices > 1 else None


def split_host() -> int | None:
    """Sets this process's CPU device count (`devices_for`) and returns it, or None. Call it
    before JAX starts its backends. JAX reads JAX_NUM_CPU_DEVICES when it is imported, so a JAX
    imported already is told through its config; processes started later read the variable."""
    devices = devices_for(os.environ, usable_cores())
    if devices is None:
        return None
    os.environ["JAX_NUM_CPU_DEVICES"] = str(devices)
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_num_cpu_devices", devices)
    return devices
