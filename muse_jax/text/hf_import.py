"""Reading Hugging Face checkpoint directories from local disk: config, weights, tokenizer.

Nothing here talks to a hub. A directory is what `save_pretrained` (or a `git clone` of a
model repository) leaves behind: `config.json`, the weights as `model.safetensors`, a sharded
`model.safetensors.index.json`, or `pytorch_model.bin` (read only when torch is installed),
and the tokenizer files (`load_tokenizer`: a tokenizer.json through the tokenizers library,
anything else through transformers). A missing or partial
directory raises `CheckpointError`, whose message is the one line that lists the files expected.

Weights are read tensor by tensor (`safetensors.safe_open`), so importing the encoder of a
full T5-XXL encoder-decoder checkpoint never holds the decoder in memory.
"""
from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from muse_jax.errors import CheckpointError
from muse_jax.models.activations import ACTIVATIONS  # noqa: F401  (the encoders' table)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "model.fp16.safetensors",
                "model.safetensors.index.fp16.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
# (single file, sharded index) pairs, in the order they are looked for; the fp16 variants are
# what `save_pretrained(variant="fp16")` writes (aMUSEd ships both precisions).
TRANSFORMERS_FILES = (("model.safetensors", "model.safetensors.index.json"),
                      ("model.fp16.safetensors", "model.safetensors.index.fp16.json"),
                      ("pytorch_model.bin", "pytorch_model.bin.index.json"))
DIFFUSERS_FILES = (("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
                   ("diffusion_pytorch_model.fp16.safetensors",
                    "diffusion_pytorch_model.safetensors.index.fp16.json"))
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.txt", "vocab.json")
EXPECTED = ("config.json + model.safetensors (or model.safetensors.index.json and its shards, "
            "or pytorch_model.bin) + tokenizer.json (or spiece.model / vocab.txt / vocab.json + merges.txt)")


def check_dir(path: str | os.PathLike, what: str, tokenizer: bool = True) -> Path:
    """Returns `path` as a Path if it holds a complete checkpoint, else raises CheckpointError.

    Checks every file before any is read, so a partial download fails with the full list of
    what is missing instead of one file at a time. `tokenizer=False` checks the model only.
    """
    empty = not str(path).strip()
    path = Path(path).expanduser()
    if empty or not path.is_dir():
        raise CheckpointError(f"{what} checkpoint directory '{path}' does not exist; "
                              f"expected a local directory with {EXPECTED}")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append("model.safetensors (or model.safetensors.index.json / pytorch_model.bin)")
    else:
        missing += [f for f in _index_shards(path) if not (path / f).is_file()]
    if tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer.json (or spiece.model / vocab.txt / vocab.json + merges.txt)")
    if missing:
        raise CheckpointError(f"{what} checkpoint directory '{path}' is incomplete: missing "
                              f"{', '.join(missing)}; expected {EXPECTED}")
    return path


def check_tokenizer_dir(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path if it holds tokenizer files, else a one-line CheckpointError."""
    path = Path(path).expanduser()
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{what} tokenizer directory '{path}' has no tokenizer files; expected "
                              f"one of {', '.join(TOKENIZER_FILES)} (vocab.json with merges.txt)")
    return path


def read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path / 'config.json'}: {e}") from None


def _index_shards(path: Path, candidates=TRANSFORMERS_FILES) -> list[str]:
    """The shard files the first index found names (none when a single file comes first)."""
    for single, index in candidates:
        if (path / single).is_file():
            return []
        if (path / index).is_file():
            return sorted(set(_weight_map(path / index).values()))
    return []


def missing_weights(path: Path, candidates=TRANSFORMERS_FILES) -> list[str]:
    """What is missing for `path` to hold one complete set of weights: [] when complete."""
    if not any((path / f).is_file() for pair in candidates for f in pair):
        return [" or ".join(f for pair in candidates for f in pair)]
    return [f for f in _index_shards(path, candidates) if not (path / f).is_file()]


def _weight_map(index: Path) -> dict[str, str]:
    try:
        return json.loads(index.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"cannot read the weight map in {index}: {e!r}") from None


class Weights:
    """Name -> numpy array over the weight files of one directory, read lazily per tensor.

    safetensors files are opened once and read tensor by tensor; PyTorch pickles (only with
    torch installed) are memory-mapped one file at a time.
    """

    def __init__(self, path: Path, candidates=TRANSFORMERS_FILES):
        self.path = path
        self._files: dict[str, str] = {}  # tensor name -> file name
        self._handles: dict[str, object] = {}
        self._torch_file: tuple[str, dict] | None = None  # the one pickle held open
        for single, index in candidates:
            if (path / single).is_file():
                names = self._open(single).keys() if single.endswith(".safetensors") else self._torch(single)
                self._files = dict.fromkeys(names, single)
                return
            if (path / index).is_file():
                self._files = _weight_map(path / index)
                return

    def _open(self, file: str):
        if file not in self._handles:
            from safetensors import safe_open
            try:
                self._handles[file] = safe_open(str(self.path / file), framework="numpy")
            except Exception as e:  # safetensors raises its own error types for corrupt files
                raise CheckpointError(f"cannot read {self.path / file}: {e}") from None
        return self._handles[file]

    def _torch(self, file: str) -> dict:
        if self._torch_file is None or self._torch_file[0] != file:
            try:
                import torch
            except ImportError:
                raise CheckpointError(
                    f"{self.path / file} is a PyTorch pickle and torch is not installed; install "
                    "torch or convert the checkpoint to model.safetensors") from None
            try:
                state = torch.load(self.path / file, map_location="cpu", weights_only=True,
                                   mmap=True)
            except Exception as e:  # noqa: BLE001  a refused pickle (UnpicklingError), a corrupt zip, ...
                cause = next((line.strip() for line in str(e).splitlines() if line.strip()),
                             type(e).__name__)
                raise CheckpointError(f"cannot read {self.path / file}: {type(e).__name__}: "
                                      f"{cause[:300]} (only plain tensors are loaded: "
                                      f"weights_only)") from None
            self._torch_file = (file, state)
        return self._torch_file[1]

    def keys(self) -> Iterable[str]:
        return self._files.keys()

    def metadata(self) -> dict[str, str]:
        """The `__metadata__` of the safetensors header ({} for pickles and shard indexes): where
        a LoRA file keeps the PEFT config it was trained with, when it keeps one."""
        files = set(self._files.values())
        if len(files) != 1 or not (file := files.pop()).endswith(".safetensors"):
            return {}
        return self._open(file).metadata() or {}

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def get(self, name: str, dtype=np.float32) -> np.ndarray:
        """The tensor `name` as a numpy array of `dtype` (bf16 files are widened then cast)."""
        if name not in self._files:
            raise CheckpointError(f"checkpoint {self.path} has no tensor '{name}' "
                                  f"(is it a checkpoint of the right model?)")
        file = self._files[name]
        if file.endswith(".safetensors"):
            handle = self._open(file)
            if handle.get_slice(name).get_dtype() == "BF16":  # numpy has no bf16 of its own
                return _read_bf16(self.path / file, name).astype(dtype)
            return np.asarray(handle.get_tensor(name)).astype(dtype)
        return self._torch(file)[name].float().numpy().astype(dtype)


def _read_bf16(file: Path, name: str) -> np.ndarray:
    """A BF16 tensor straight from the safetensors layout (u64 header size, JSON header, data),
    as ml_dtypes.bfloat16: safetensors' numpy reader rejects bf16, common in T5-XXL files."""
    import ml_dtypes

    with open(file, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        entry = json.loads(f.read(size))[name]
        begin, end = entry["data_offsets"]
        f.seek(8 + size + begin)
        data = f.read(end - begin)
    return np.frombuffer(data, ml_dtypes.bfloat16).reshape(entry["shape"])


# The tokenizer classes of the encoders muse_jax reads. A directory whose tokenizer_config.json
# names one is loaded with that class, which is what AutoTokenizer picks for it (same class,
# same ids: tests/test_text_encoder.py), without AutoTokenizer's import of every model
# configuration, and with it of torch where torch is installed: 1.2 s against 3.0 s, and 15k
# against 51k page faults, for every process that starts a text encoder (2026-12-05, 2 cores);
# six test files that start CLIs (test_sample_cli, _finetune, _sr, _quality_evals, _faults,
# _amused_lora) ran in 381 s against 425 s on 2 workers.
NAMED_TOKENIZERS = ("BertTokenizer", "T5Tokenizer", "CLIPTokenizer")


def _tokenizer_config(path: Path) -> dict:
    try:
        config = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def _named_class(config: dict) -> str | None:
    """The NAMED_TOKENIZERS class a tokenizer_config.json names, without "Fast"; else None."""
    named = config.get("tokenizer_class")
    if isinstance(named, str) and named.removesuffix("Fast") in NAMED_TOKENIZERS:
        return named.removesuffix("Fast")
    return None


def _tokenizer_class(path: Path):
    """The class tokenizer_config.json names if it is one of NAMED_TOKENIZERS, else AutoTokenizer."""
    import transformers

    named = _named_class(_tokenizer_config(path))
    return getattr(transformers, named) if named else transformers.AutoTokenizer


class JsonTokenizer:
    """A directory's tokenizer.json, run by the `tokenizers` library (the engine of transformers'
    fast tokenizers) and called as muse_jax calls a transformers tokenizer: ids and attention
    mask, truncated and padded on the right to `max_length`, or unpadded to measure lengths.

    For the classes of NAMED_TOKENIZERS it gives the ids transformers gives (MiniLM's files, a
    CLIP and a T5 tokenizer as transformers saves them, the shapes captions in every phrasing:
    tests/test_text_encoder.py) without importing transformers: a `sample` call of a tiny
    shapes run took 8.7 s against 10.5 s loading BertTokenizer (12.2 -> 10.3 s of CPU; median
    of 5 alternating calls, 2-core AMD EPYC, 2026-12-05)."""

    padding_side = "right"

    def __init__(self, path: Path, pad_token: str):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.pad_token, self.pad_token_id = pad_token, self._tokenizer.token_to_id(pad_token)

    def __call__(self, texts: list[str], max_length: int | None = None, truncation: bool = False,
                 padding: bool | str = False, return_attention_mask: bool = True,
                 verbose: bool = True) -> dict[str, list[list[int]]]:
        del return_attention_mask, verbose  # the mask always comes back; nothing is logged
        t = self._tokenizer
        if truncation and max_length:
            t.enable_truncation(max_length)
        else:
            t.no_truncation()
        if padding == "max_length" and max_length:
            t.enable_padding(length=max_length, pad_id=self.pad_token_id, pad_token=self.pad_token)
        else:
            t.no_padding()
        encodings = t.encode_batch(list(texts))
        return {"input_ids": [e.ids for e in encodings],
                "attention_mask": [e.attention_mask for e in encodings]}


def _json_tokenizer(path: Path) -> JsonTokenizer | None:
    """A JsonTokenizer where the directory has a tokenizer.json of a NAMED_TOKENIZERS class and
    a padding token in it; else None (transformers loads it)."""
    config = _tokenizer_config(path)
    if not (path / "tokenizer.json").is_file() or _named_class(config) is None:
        return None
    pad = config.get("pad_token")
    if pad is None:
        try:
            pad = json.loads((path / "special_tokens_map.json").read_text()).get("pad_token")
        except (OSError, json.JSONDecodeError, AttributeError):
            pad = None
    pad = pad.get("content") if isinstance(pad, dict) else pad
    if not isinstance(pad, str):
        return None
    try:
        tokenizer = JsonTokenizer(path, pad)
    except Exception:  # an unreadable tokenizer.json: transformers names the problem
        return None
    return tokenizer if tokenizer.pad_token_id is not None else None


def load_tokenizer(path: Path):
    """The directory's tokenizer (a JsonTokenizer, else `_tokenizer_class`), right padding;
    never contacts a hub."""
    if (fast := _json_tokenizer(path)) is not None:
        return fast
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if (not (path / "tokenizer.json").is_file() and (path / "spiece.model").is_file()
            and importlib.util.find_spec("sentencepiece") is None):
        raise CheckpointError(
            f"the tokenizer in {path} is a spiece.model only, which transformers reads with the "
            "sentencepiece package: `pip install sentencepiece` (or add a tokenizer.json)")
    try:
        tokenizer = _tokenizer_class(path).from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load the tokenizer from {path}: {first}") from None
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        raise CheckpointError(f"the tokenizer in {path} has no padding token")
    return tokenizer
