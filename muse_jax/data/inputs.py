"""The input layouts `python -m muse_jax.data.convert` reads, as lists of work for its processes.

  folder      images under a directory (recursive), captions in same-name .txt files, one a line
  csv / tsv   a table of local image paths and captions (CC3M / CC12M after download): a header
              naming the columns (image/path/file..., caption/text...) or two unnamed columns,
              either order; rows naming the same image add captions to it
  jsonl       one {"image": path, "caption": str or [str, ...]} object a line
  webdataset  .tar shards: members grouped by key (name up to the first dot), image in
              .jpg/.jpeg/.png/.webp/.bmp, caption in .txt (or .json "caption"/"text")

Relative paths in tables are relative to the table's directory. Listing reads only the lists
(and file names); image bytes are read by the worker that converts them (`read_items`), and a
file that cannot be read becomes a counted skip, never an exception.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import os
import tarfile
from pathlib import Path

from muse_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_COLUMNS = ("image", "image_path", "img", "path", "filepath", "file", "filename", "file_name")
CAPTION_COLUMNS = ("caption", "captions", "text", "title", "alt", "description", "prompt")
FORMATS = ("auto", "folder", "csv", "tsv", "jsonl", "webdataset")
# A tar member larger than this is skipped unread (counted): no image a decoder accepts
# (decode.MAX_PIXELS) needs more, and reading one whole would hold gigabytes in memory.
MAX_TAR_MEMBER_BYTES = 256 << 20
TOO_LARGE = f"tar member over {MAX_TAR_MEMBER_BYTES >> 20} MiB (not read)"


@dataclasses.dataclass(frozen=True)
class Task:
    """One output shard's worth of input: `items` [(key, image path, captions or None)] or a tar."""
    items: tuple = ()
    tar: str = ""

    def size(self) -> int:
        return len(self.items) if not self.tar else 1

    def fingerprint(self) -> str:
        """Changes when the input of this shard does, so a rerun redoes stale shards only."""
        if self.tar:
            st = os.stat(self.tar)
            text = f"{self.tar}|{st.st_size}|{st.st_mtime_ns}"
        else:
            text = repr(self.items)
        return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "webdataset" if any(path.glob("*.tar")) else "folder"
    suffix = path.suffix.lower()
    for fmt, suffixes in (("csv", (".csv",)), ("tsv", (".tsv", ".txt")), ("jsonl", (".jsonl", ".json")),
                          ("webdataset", (".tar",))):
        if suffix in suffixes:
            return fmt
    raise UserError(f"cannot tell the format of --input={path} from its name; pass --format")


def list_tasks(input_path: str, fmt: str, shard_size: int, image_column: str = "",
               caption_column: str = "") -> tuple[str, list[Task], dict[str, int]]:
    """(format, tasks, skipped while listing {reason: count}) for `input_path`."""
    if shard_size < 1:
        raise UserError(f"--shard_size must be >= 1, got {shard_size}")
    tars = sorted(glob.glob(input_path)) if any(c in input_path for c in "*?[") else None
    path = Path(input_path)
    if tars is None and not path.exists():
        raise UserError(f"--input={input_path} does not exist")
    if fmt == "auto":
        fmt = "webdataset" if tars is not None else detect_format(path)
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    skipped: dict[str, int] = {}
    if fmt == "webdataset":
        if tars is None:
            tars = sorted(str(p) for p in path.glob("*.tar")) if path.is_dir() else [str(path)]
        if not tars:
            raise UserError(f"--input={input_path} matches no .tar files")
        return fmt, [Task(tar=t) for t in tars], skipped
    if fmt == "folder":
        if not path.is_dir():
            raise UserError(f"--input={input_path} is not a directory (--format=folder)")
        items = [(str(p.relative_to(path)), str(p), None) for p in sorted(path.rglob("*"))
                 if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    elif fmt in ("csv", "tsv"):
        items = _table_items(path, "\t" if fmt == "tsv" else ",", image_column, caption_column, skipped)
    else:
        items = _jsonl_items(path, skipped)
    if not items:
        raise UserError(f"--input={input_path} lists no images")
    tasks = [Task(items=tuple(items[i:i + shard_size])) for i in range(0, len(items), shard_size)]
    return fmt, tasks, skipped


def _resolve(base: Path, name: str) -> str:
    return name if os.path.isabs(name) else str(base / name)


def _group(rows: list[tuple[str, str]], base: Path, skipped: dict) -> list[tuple]:
    """[(key, path, captions)] with the captions of rows naming the same image merged."""
    merged: dict[str, list[str]] = {}
    for image, caption in rows:
        if image.startswith(("http://", "https://")):
            skipped["URL, not a local file (download the images first)"] = skipped.get(
                "URL, not a local file (download the images first)", 0) + 1
            continue
        merged.setdefault(image, []).append(caption)
    return [(image, _resolve(base, image), tuple(captions)) for image, captions in merged.items()]


def _column(header: list[str], flag: str, names: tuple[str, ...], what: str, path: Path):
    lower = [h.strip().lower() for h in header]
    if flag:
        if flag.isdigit() and int(flag) < len(header):
            return int(flag)
        if flag.lower() in lower:
            return lower.index(flag.lower())
        raise UserError(f"{path} has no column {flag!r} (columns: {', '.join(header)})")
    for name in names:
        if name in lower:
            return lower.index(name)
    raise UserError(f"{path}: no {what} column among {', '.join(header)}; "
                    f"pass --{what}_column")


def _table_items(path: Path, delimiter: str, image_column: str, caption_column: str,
                 skipped: dict) -> list[tuple]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            rows = [r for r in reader if r]
        except csv.Error as e:  # a field over csv.field_size_limit(): the read stays bounded
            raise UserError(f"{path}, line {reader.line_num}: {e} (a caption or path over "
                            f"{csv.field_size_limit():,} characters); shorten or drop that "
                            f"row") from None
    if not rows:
        return []
    if {h.strip().lower() for h in rows[0]} & set(IMAGE_COLUMNS + CAPTION_COLUMNS):
        header, rows = rows[0], rows[1:]
        i = _column(header, image_column, IMAGE_COLUMNS, "image", path)
        j = _column(header, caption_column, CAPTION_COLUMNS, "caption", path)
    elif image_column.isdigit() and caption_column.isdigit():
        i, j = int(image_column), int(caption_column)
    elif len(rows[0]) == 2:  # two unnamed columns: the one that looks like an image holds paths
        first = rows[0][0]
        i = 0 if first.lower().endswith(IMAGE_SUFFIXES) or (path.parent / first).is_file() else 1
        j = 1 - i
    else:
        raise UserError(f"{path} has no header naming its image and caption columns; pass "
                        "--image_column and --caption_column (0-based column numbers)")
    pairs = []
    for row in rows:
        if len(row) <= max(i, j):
            skipped["malformed row"] = skipped.get("malformed row", 0) + 1
        else:
            pairs.append((row[i], row[j]))
    return _group(pairs, path.parent, skipped)


def _jsonl_items(path: Path, skipped: dict) -> list[tuple]:
    pairs = []
    for line in path.read_bytes().decode("utf-8", "surrogateescape").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            image = next(obj[k] for k in IMAGE_COLUMNS if k in obj)
        except (ValueError, StopIteration, TypeError):
            skipped["malformed JSONL line"] = skipped.get("malformed JSONL line", 0) + 1
            continue
        caption = next((obj[k] for k in CAPTION_COLUMNS if k in obj), "")
        for c in caption if isinstance(caption, list) else [caption]:
            pairs.append((str(image), c if isinstance(c, str) else str(c)))
    return _group(pairs, path.parent, skipped)


def read_items(task: Task):
    """Yields (key, image bytes or None, raw captions, why the bytes are None) for a task."""
    if task.tar:
        yield from _read_tar(task.tar)
        return
    for key, image_path, captions in task.items:
        try:
            data, why = Path(image_path).read_bytes(), ""
        except OSError as e:
            data, why = None, "missing file" if isinstance(e, FileNotFoundError) else "unreadable file"
        if captions is None:  # folder layout: same-name .txt, one caption a line
            caption_file = Path(image_path).with_suffix(".txt")
            try:
                captions = caption_file.read_bytes().splitlines() if caption_file.exists() else []
            except OSError:
                captions = []
        yield key, data, list(captions), why


def _read_tar(path: str):
    """Groups of consecutive members with the same key; a damaged tar ends early, counted."""
    current, group = None, {}

    def emit(key, group):
        image = next((group[e] for e in ("jpg", "jpeg", "png", "webp", "bmp") if e in group), None)
        captions = []
        if "txt" in group:
            captions = group["txt"].splitlines()
        elif "json" in group:
            try:
                obj = json.loads(group["json"])
                c = obj.get("caption", obj.get("text", ""))
                captions = c if isinstance(c, list) else [c]
            except (ValueError, AttributeError):
                captions = []
        why = "" if image is not None else "no image in tar sample"
        if "__too_large__" in group:
            image, why = None, TOO_LARGE
        return f"{os.path.basename(path)}:{key}", image, captions, why

    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, base = os.path.split(member.name)
                if "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                key = os.path.join(directory, stem)
                if key != current:
                    if current is not None:
                        yield emit(current, group)
                    current, group = key, {}
                if member.size > MAX_TAR_MEMBER_BYTES:
                    group["__too_large__"] = b""  # the stream skips its bytes unread
                    continue
                group[ext.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError):
        # The sample being read when the damage came is lost with it (one count).
        yield f"{os.path.basename(path)}:{current}", None, [], "damaged tar (read up to the damage)"
        return
    if current is not None:
        yield emit(current, group)
