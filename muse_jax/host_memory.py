"""glibc malloc settings that stop XLA:CPU from mapping and faulting in its buffers every step.

Each execution of a compiled step allocates its temporary buffer (about 1 GiB for the demo's
base step) from an XLA worker thread. glibc serves a request that large from a fresh `mmap`,
since a worker thread's arena cannot hold it, and unmaps it on free: every step the kernel
hands out and zeroes the same gigabyte again, page by page. Measured 2026-12-01 on the 2-core
machine, 40 steps of `configs/base_shapes.py:demo` (`benchmarks/host_memory.py` reruns it):
13.7 M minor page faults and 27 s of system time by default; 1.15 M and 4.8 s with the
settings below, which serve every thread from the main heap, never by `mmap`, and keep
freed memory for reuse instead of returning it to the kernel. The cost: the process keeps its
peak heap. Variants of them were no faster (2026-12-06, the demo's base step on fixed batches,
three rounds of 50 steps, nothing else running): two arenas 0.30-0.33 s against 0.24-0.27 s
(not looked into; perhaps a thread's own arena, at most 64 MiB, cannot hold the step's buffer
and glibc retries in the main one), no fast bins 0.25-0.27 s.

On a TPU or GPU host the step's buffers live on the accelerator; these settings then touch
only host-side allocations (not measured there). `MUSE_JAX_MALLOC=default` leaves glibc as is.
"""
from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

SETTINGS = {  # parameter: value, applied in this order
    _M_ARENA_MAX: 1,  # every thread allocates from the main heap, which can grow to any size
    _M_MMAP_MAX: 0,  # never mmap a request: large buffers come from (and return to) the heap
    _M_TRIM_THRESHOLD: -1,  # glibc reads it as SIZE_MAX: never give freed heap back, the
    # next step reuses it (2 GiB, the largest positive int, was too little: the demo step frees
    # more than that at the top of the heap)
}


def keep_freed_memory() -> bool:
    """Applies SETTINGS to this process; True if they apply. Call it before JAX starts its
    CPU backend: a thread that has allocated already keeps the arena it has."""
    if os.environ.get("MUSE_JAX_MALLOC") == "default" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
