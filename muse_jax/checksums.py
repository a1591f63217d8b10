"""Checksums of a train state's arrays, saved with each checkpoint and checked when it loads.

Orbax reads a checkpoint whose bytes rotted without complaint as long as the files still
decompress: the run then resumes from garbage (NaN PSNR, every later step skipped). So each
save records, per array, two 32-bit weighted sums of its raw bits, and each restore recomputes
them on what was read; a mismatch makes the checkpoint unreadable like a truncated one.

The sums run on the device, on arrays however they are sharded (the position weights come
from per-axis iotas, so nothing is reshaped or gathered): a checkpoint written on a pod checks
on one CPU. Arrays that already live in this host's memory (CPU devices) are summed by numpy
instead, by the same formula (`_weighted_sums`): the jitted sums trace, lower and compile once
per leaf shape, and on CPUs that was most of a small run's checkpoint cost (the test suite spent
~105 s of its 2,830 s of CPU in them, py-spy, 2026-12-07). They are not cryptographic: they
catch bit rot and truncation, not tampering. Any change to a single 32-bit word changes the
first sum (its weight is odd, so invertible modulo 2^32). The same pass reports whether every
floating-point value is finite, so that no checkpoint is saved from a poisoned state.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from muse_jax import compile_options
from muse_jax.errors import CheckpointError

_GOLDEN = np.uint32(0x9E3779B9)
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32}  # an element's bits, by its size in bytes


def _path_name(path) -> str:
    """A leaf's path as saved and as restored alike (a dataclass field and a dict key match)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _words(x: jax.Array) -> jax.Array:
    """The array's raw bits as uint32, elementwise."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize]).astype(jnp.uint32)


def _weighted_sums(words, index, xp):
    """The two sums of uint32 `words` at flat positions `index` (uint32, modulo 2^32), in `xp`
    (jax.numpy on the device, numpy on the host): every product and sum wraps modulo 2^32."""
    first = xp.sum(words * (2 * index + 1), dtype=xp.uint32)
    mixed = (words ^ (words >> 15)) * _GOLDEN
    second = xp.sum(mixed ^ (index * _GOLDEN + 1), dtype=xp.uint32)
    return first, second


def _sums(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    words = _words(x)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):  # the flat position, without reshaping
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * np.uint32(
            stride % 2**32)
        stride *= words.shape[axis]
    first, second = _weighted_sums(words, index, jnp)
    finite = (jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
              else jnp.array(True))
    return first, second, finite


@functools.cache
def _sums_compiled():
    """`_sums`, compiled once per leaf shape, dtype and sharding, which a state repeats: the
    demo's base state has 331 arrays of 13 shapes, and its first checksum took 2.0 s against
    4.9 s as one function over all the arrays (2-core CPU, 2026-12-05); later calls take the
    same either way. They run once a checkpoint, so they compile as programs that run once
    (`compile_options.run_once`): 14 compiles 3.1 -> 2.0 s on the demo's base state
    (2026-12-06)."""
    return jax.jit(_sums, compiler_options=compile_options.run_once())


def _host_sums(x) -> tuple[np.uint32, np.uint32, bool]:
    """`_sums` in numpy, for an array in host memory: the same three values."""
    if not isinstance(x, jax.Array):  # numpy leaves as jit takes them (float64 -> float32)
        x = np.asarray(x)
        x = x.astype(jax.dtypes.canonicalize_dtype(x.dtype))
    elif jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    values = np.ascontiguousarray(np.asarray(x))
    if values.dtype == np.bool_:
        words = values.astype(np.uint32)
    else:
        words = values.view(_UNSIGNED[values.dtype.itemsize]).astype(np.uint32)
    words = words.reshape(-1)
    index = np.arange(words.size, dtype=np.uint64).astype(np.uint32)  # modulo 2^32, as the iotas
    with np.errstate(over="ignore"):
        first, second = _weighted_sums(words, index, np)
    finite = (bool(np.all(np.isfinite(values.astype(np.float32))))
              if jnp.issubdtype(values.dtype, jnp.inexact) else True)
    return first, second, finite


def _on_host(leaf) -> bool:
    """Whether `leaf` is already in this host's memory, whole: numpy can sum it in place."""
    if not isinstance(leaf, jax.Array):
        return True
    return leaf.is_fully_addressable and all(d.platform == "cpu" for d in leaf.sharding.device_set)


def compute(state) -> tuple[dict[str, list[int]], bool]:
    """({leaf path: [sum, sum]}, whether every float in `state` is finite)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    names = [_path_name(path) for path, _ in flat]
    outs = jax.device_get([_host_sums(leaf) if _on_host(leaf) else
                           [s.addressable_shards[0].data if isinstance(s, jax.Array) else s
                            for s in _sums_compiled()(leaf)]
                           for _, leaf in flat])
    record = {name: [int(a), int(b)] for name, (a, b, _) in zip(names, outs)}
    return record, all(bool(f) for _, _, f in outs)


def verify(state, saved: dict[str, list[int]]) -> None:
    """Raises CheckpointError naming the first array whose bits differ from when it was saved."""
    actual, _ = compute(state)
    for name, sums in saved.items():
        if actual.get(name) != list(sums):
            differ = sum(actual.get(n) != list(s) for n, s in saved.items())
            raise CheckpointError(f"checksum mismatch in {name or 'the state'}"
                                  + (f" and {differ - 1} more array(s)" if differ > 1 else "")
                                  + " (the files changed after they were written)")
