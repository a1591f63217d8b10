"""A `gs://` bucket kept in a local folder, for tests that open runs by URL.

Runs live on GCS on TPU VMs (`--workdir=gs://bucket/run`), so every path a user gives goes through
`etils.epath`, never `os.path`. This stands a local folder in for the bucket at the two places a
`gs://` path leaves Python: epath's fsspec backend (config.json, checkpoint listings, small files)
and TensorStore's kvstore, which Orbax points at GCS for array data (plus Orbax's one question to
the GCS client, whether the bucket has a hierarchical namespace). Code that used `os.path` or
`open()` on a workdir would see a path like `gs://bucket/run` that does not exist locally and fail.
"""
from __future__ import annotations

from pathlib import Path

import importlib
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from etils.epath import backend, gpath
from orbax.checkpoint._src.path import gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils


def install(monkeypatch, root: Path) -> None:
    """Makes `gs://<bucket>/<path>` mean `root/<bucket>/<path>` for epath and Orbax."""

    class LocalBucket(DirFileSystem):
        protocol = ("gs", "gcs")

        def __init__(self, *args, **kwargs):
            super().__init__(path=str(root), fs=LocalFileSystem())

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            return path.split("://", 1)[1] if "://" in path else path

    # epath's fsspec backend (TF's gfile would go to the network), with the bucket registered.
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    for protocol in LocalBucket.protocol:
        monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, protocol,
                            LocalBucket)
    backend.fsspec_backend._get_filesystem.cache_clear()

    build = tensorstore_utils.build_kvstore_tspec

    def local_kvstore(directory, *args, **kwargs):
        directory = str(directory)
        if directory.startswith("gs://"):
            directory = str(root / directory[len("gs://"):])
        return build(directory, *args, **kwargs)

    monkeypatch.setattr(tensorstore_utils, "build_kvstore_tspec", local_kvstore)
    # Orbax asks the GCS client whether the bucket has a hierarchical namespace: a plain one.
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
