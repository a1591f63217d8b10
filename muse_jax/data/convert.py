"""Convert image-caption collections into ArrayRecord shards for training (data.source=array_record).

    python -m muse_jax.data.convert --input=PATH --out=DIR [--format=auto] [--shard_size=5000]
        [--num_workers=N] [--min_size=16] [--resize_to=0] [--image_column= --caption_column=]

Reads any layout of muse_jax/data/inputs.py (a folder with .txt captions, a CSV/TSV of local
paths and captions as CC3M/CC12M are after download, JSONL, webdataset .tar shards) and writes
the records of muse_jax/data/image_records.py in the shard layout of muse_jax/data/shards.py.

Every image goes through muse_jax/data/decode.py: one that decodes cleanly to 8-bit RGB keeps
its original bytes (nothing is lost to re-encoding); one that needed repair (CMYK, grayscale,
16-bit, alpha, a huge JPEG decoded at reduced scale) is re-encoded, PNG if it was lossless and
JPEG otherwise; one that does not decode, is a decompression bomb, or is smaller than
--min_size is skipped. Captions are read as UTF-8, else cp1252/Latin-1 (counted); an empty
caption keeps its image. The aspect-ratio filter is left to training (data.max_aspect_ratio),
so one conversion serves any setting of it.

Shards are converted in parallel by --num_workers processes, each written under a temporary
name and renamed when complete, with its counts in .convert/<shard>.json. A rerun with the
same settings skips shards already complete (and redoes any whose input changed); metadata.json
is written last. --out must be empty, new, or an earlier conversion's (it has convert.json):
a directory of anything else is refused unless --overwrite. The final report says how many images were written, repaired and skipped,
and why. Caption embeddings: `python -m muse_jax.text.precompute` with data.source=array_record
and data.path=DIR (they follow each record's first caption).
"""
from __future__ import annotations

import collections
import io
import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
from absl import flags

from muse_jax import errors
from muse_jax.data import decode, image_records, inputs, shards
from muse_jax.errors import UserError

FLAGS = flags.FLAGS
STATE_DIR = ".convert"  # per-shard completion records
SETTINGS = "convert.json"  # what the directory was converted from, checked on resume
KEEP_FORMATS = ("JPEG", "PNG", "WEBP")  # stored as found when they decode cleanly


def define_flags() -> None:
    flags.DEFINE_string("input", None, "Folder, CSV/TSV, JSONL, .tar, directory of .tar, or a glob.")
    flags.DEFINE_string("out", None, "Output directory for the ArrayRecord shards.")
    flags.DEFINE_enum("format", "auto", inputs.FORMATS, "Input layout (auto: from the name).")
    flags.DEFINE_string("image_column", "", "CSV/TSV: name or 0-based number of the image column.")
    flags.DEFINE_string("caption_column", "", "CSV/TSV: name or 0-based number of the caption column.")
    flags.DEFINE_integer("shard_size", 5000, "Images listed per output shard (not for tars: one "
                         "shard per tar).")
    flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Converting processes (0: this one).")
    flags.DEFINE_integer("min_size", 16, "Skip images whose shorter side is below this (0: keep all).")
    flags.DEFINE_integer("resize_to", 0, "Shrink images whose shorter side exceeds this to it "
                         "(re-encoded; 0: keep full size).")
    flags.DEFINE_integer("jpeg_quality", 95, "Quality of re-encoded JPEGs.")
    flags.DEFINE_bool("overwrite", False, "Delete a previous conversion in --out and start over.")


def _settings(input_path: str, fmt: str, shard_size: int, min_size: int, resize_to: int,
              jpeg_quality: int) -> dict:
    return {"input": os.path.abspath(input_path) if "://" not in input_path else input_path,
            "input_format": fmt, "shard_size": shard_size, "min_size": min_size,
            "resize_to": resize_to, "jpeg_quality": jpeg_quality}


def encode(image, note: str, fmt: str, data: bytes, resize_to: int, jpeg_quality: int):
    """(bytes to store, width, height, repair note): the original bytes unless they need changing."""
    from PIL import Image

    h, w = image.shape[:2]
    if resize_to and min(h, w) > resize_to:
        scale = resize_to / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
        h, w = image.shape[:2]
    elif not note and fmt in KEEP_FORMATS:
        return data, w, h, ""
    buf = io.BytesIO()
    if fmt in decode.LOSSLESS_FORMATS:
        Image.fromarray(image).save(buf, format="PNG")
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=jpeg_quality)
    return buf.getvalue(), w, h, note


def convert_shard(job: tuple) -> dict:
    """Writes one shard (in a worker); returns its counts, also saved in .convert/<shard>.json."""
    task, out, name, settings = job
    counts = {"file": name, "records": 0, "tried": 0, "skipped": collections.Counter(),
              "repaired": collections.Counter(), "fingerprint": task.fingerprint()}

    def records():
        for key, data, raw_captions, why in inputs.read_items(task):
            counts["tried"] += 1
            if data is None:
                counts["skipped"][why] += 1
                continue
            image, note, fmt = decode.decode_image(data)
            if image is None:
                counts["skipped"][note] += 1
                continue
            if min(image.shape[:2]) < max(1, settings["min_size"]):
                counts["skipped"][f"smaller than --min_size={settings['min_size']}"] += 1
                continue
            captions, caption_notes = decode.clean_captions(raw_captions)
            stored, w, h, repair = encode(image, note, fmt, data, settings["resize_to"],
                                          settings["jpeg_quality"])
            for n in ([repair] if repair else []) + caption_notes:
                counts["repaired"][n] += 1
            counts["records"] += 1
            yield image_records.serialize(stored, captions, w, h, key)

    shards.write_records(Path(out) / name, records())
    (Path(out) / STATE_DIR / f"{name}.json").write_text(json.dumps(counts))
    return counts


def _done(out: Path, name: str, fingerprint: str) -> dict | None:
    """The saved counts of a complete shard with this input, or None."""
    state = out / STATE_DIR / f"{name}.json"
    if not (out / name).is_file() or not state.is_file():
        return None
    counts = json.loads(state.read_text())
    return counts if counts.get("fingerprint") == fingerprint else None


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuses, before the input is listed, an --out that is not this converter's to write."""
    previous = out / SETTINGS
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if not overwrite and not previous.is_file() and out.is_dir() and any(out.iterdir()):
        # Not written by a conversion (no convert.json): another tool's data, e.g. caption
        # embeddings, whose metadata.json this would replace.
        found = sorted(p.name for p in out.iterdir())
        raise UserError(f"--out {out} is not empty and holds no conversion ({', '.join(found[:3])}"
                        f"{', ...' if len(found) > 3 else ''}); choose an empty or new "
                        f"directory, or pass --overwrite")


def _prepare(out: Path, settings: dict, overwrite: bool) -> None:
    previous = out / SETTINGS
    if previous.is_file() and json.loads(previous.read_text()) != settings and not overwrite:
        raise UserError(f"{out} holds a conversion with other settings or input ({previous}); "
                        "pass --overwrite to replace it, or another --out")
    if overwrite or not previous.is_file():
        shards.prepare_out(out, image_records.PREFIX, "converted images", overwrite=True,
                           extra=(SETTINGS,))
        for p in (out / STATE_DIR).glob("*.json") if (out / STATE_DIR).is_dir() else ():
            p.unlink()
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    (out / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")


def convert(input_path: str, out: str, fmt: str = "auto", shard_size: int = 5000,
            num_workers: int = 0, min_size: int = 16, resize_to: int = 0, jpeg_quality: int = 95,
            image_column: str = "", caption_column: str = "", overwrite: bool = False,
            progress: bool = True) -> dict:
    """Converts `input_path` into shards in `out`; returns the report (also in metadata.json)."""
    from muse_jax.progress import bar

    _check_out(Path(out), overwrite)
    fmt, tasks, listing_skips = inputs.list_tasks(input_path, fmt, shard_size, image_column,
                                                  caption_column)
    out_dir = Path(out)
    settings = _settings(input_path, fmt, shard_size, min_size, resize_to, jpeg_quality)
    _prepare(out_dir, settings, overwrite)
    names = [shards.shard_name(image_records.PREFIX, i, len(tasks)) for i in range(len(tasks))]
    results, todo = {}, []
    for task, name in zip(tasks, names):
        done = _done(out_dir, name, task.fingerprint())
        if done is not None:
            results[name] = done
        else:
            todo.append((task, str(out_dir), name, settings))
    resumed = len(results)
    sizes = {name: task.size() for task, _, name, _ in todo}
    unit = "tar" if fmt == "webdataset" else "image"
    with bar(total=sum(t.size() for t, *_ in todo), unit=unit, desc="converting",
             disable=not progress, file=sys.stderr) as counter:
        if num_workers > 0 and len(todo) > 1:
            ctx = multiprocessing.get_context("spawn")  # the caller may hold threads (JAX, TF)
            with ctx.Pool(min(num_workers, len(todo))) as pool:
                for counts in pool.imap_unordered(convert_shard, todo):
                    results[counts["file"]] = counts
                    counter.update(sizes[counts["file"]])
        else:
            for job in todo:
                counts = convert_shard(job)
                results[counts["file"]] = counts
                counter.update(job[0].size())
    report = _report(results, names, resumed, listing_skips)
    # Shards of an earlier listing of a changed input, and leftovers of interrupted writes.
    for stale in [*out_dir.glob(f"{image_records.PREFIX}-*.array_record*"),
                  *(out_dir / STATE_DIR).glob("*.json")]:
        if stale.name.removesuffix(".json") not in names:
            stale.unlink()
    shards.write_metadata(out_dir, {"format": image_records.FORMAT, **settings, **report},
                          [{"file": n, "records": results[n]["records"]} for n in names])
    return report


def _report(results: dict, names: list[str], resumed: int, listing_skips: dict) -> dict:
    skipped, repaired = collections.Counter(listing_skips), collections.Counter()
    for name in names:
        skipped.update(results[name]["skipped"])
        repaired.update(results[name]["repaired"])
    return {"written": sum(results[n]["records"] for n in names),
            "tried": sum(results[n]["tried"] for n in names) + sum(listing_skips.values()),
            "skipped": dict(skipped.most_common()), "repaired": dict(repaired.most_common()),
            "shards_resumed": resumed, "shards_written": len(names) - resumed}


def format_report(report: dict, out: str) -> str:
    lines = [f"wrote {report['written']} of {report['tried']} images to {out} "
             f"({report['shards_written']} shards converted, {report['shards_resumed']} already "
             "complete and skipped)"]
    for what in ("skipped", "repaired"):
        total = sum(report[what].values())
        lines.append(f"{what}: {total}" + "".join(f"\n  {n:6d}  {reason}"
                                                  for reason, n in report[what].items()))
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("input", "out"):
        if not FLAGS[name].value:
            raise UserError(f"--{name} is required")
    report = convert(FLAGS.input, FLAGS.out, FLAGS.format, FLAGS.shard_size, FLAGS.num_workers,
                     FLAGS.min_size, FLAGS.resize_to, FLAGS.jpeg_quality, FLAGS.image_column,
                     FLAGS.caption_column, FLAGS.overwrite)
    print(format_report(report, FLAGS.out), flush=True)
    if not report["written"]:
        raise UserError(f"no image of {FLAGS.input} could be converted (see the counts above)")


if __name__ == "__main__":
    define_flags()
    errors.run(main)
