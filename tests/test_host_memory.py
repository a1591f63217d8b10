"""host_memory: a buffer freed by a worker thread is reused, not mapped and faulted in again."""
import json
import os
import subprocess
import sys

# A worker thread (as XLA's are) allocates, fills and frees a 256 MiB buffer ROUNDS times;
# the child prints its minor page faults over the loop. numpy (and its OpenBLAS threads) comes
# first, as in the CLIs.
CHILD = """
import ctypes, json, resource, threading
import numpy as np
from muse_jax import host_memory
applied = host_memory.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def work():  # glibc's malloc as XLA calls it (numpy would ask for transparent huge pages)
    for _ in range({rounds}):
        buffer = libc.malloc(256 << 20)
        ctypes.memset(buffer, 1, 256 << 20)
        libc.free(buffer)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(json.dumps({{"applied": applied,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}}))
"""
ROUNDS = 4
PAGES = (256 << 20) // 4096  # of one buffer


def _child(setting: str) -> dict:
    env = {**os.environ, "MUSE_JAX_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", CHILD.format(rounds=ROUNDS)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_worker_threads_freed_buffer_is_reused_instead_of_faulted_in_again():
    default, tuned = _child("default"), _child("")
    assert not default["applied"] and tuned["applied"]
    assert default["faults"] > (ROUNDS - 0.5) * PAGES  # every round maps and zeroes it anew
    assert tuned["faults"] < 1.5 * PAGES  # the first round's pages, reused by the others
