"""Conversion to ArrayRecord: every input layout, every kind of bad file, resuming, the CLI."""
import io
import json
import tarfile

import numpy as np
import pytest
from conftest import run_module
from image_files import encode, photo, write_zoo
from PIL import Image

from muse_jax.data import convert, decode, image_records
from muse_jax.errors import UserError


def _records(out):
    recs = image_records.ImageRecords(str(out))
    return {r["key"]: r for r in (recs[i] for i in range(len(recs)))}


def test_every_bad_file_is_repaired_or_skipped_and_counted(tmp_path):
    expected = write_zoo(tmp_path / "zoo")
    report = convert.convert(str(tmp_path / "zoo"), str(tmp_path / "out"), shard_size=5,
                             num_workers=0, progress=False)
    kept = {n for n, outcome in expected.items() if outcome != "skipped"}
    assert report["tried"] == len(expected) == 16
    assert report["written"] == len(kept) == 10
    assert report["skipped"] == {decode.CORRUPT: 2, decode.NOT_AN_IMAGE: 1, decode.EMPTY_FILE: 1,
                                 decode.BOMB: 1, "smaller than --min_size=16": 1}
    assert report["repaired"] == {"alpha composited on white": 2, "CMYK -> RGB": 1,
                                  "grayscale -> RGB": 1, "I;16 (high bit depth) -> 8-bit RGB": 1,
                                  "empty caption": 1, "non-UTF-8 caption read as cp1252": 1}
    print("robustness counts:", {"tried": report["tried"], "written": report["written"],
                                 "repaired": sum(report["repaired"].values()),
                                 "skipped": sum(report["skipped"].values()), "crashed": 0})

    records = _records(tmp_path / "out")
    assert set(records) == kept
    # Clean files keep their bytes; every stored image decodes cleanly to what was recorded.
    assert records["good.jpg"]["image"] == (tmp_path / "zoo" / "good.jpg").read_bytes()
    for record in records.values():
        image, note, _ = decode.decode_image(record["image"])
        assert note == "" and image.dtype == np.uint8 and image.shape == (
            record["height"], record["width"], 3)
    gray16 = decode.decode_image(records["gray16.png"]["image"])[0]
    assert 0 < gray16.mean() < 250 and gray16.std() > 10  # scaled from 16 bits, not clipped white
    alpha = decode.decode_image(records["alpha.png"]["image"])[0].astype(int)
    np.testing.assert_allclose(alpha, photo(36, 36, 5).astype(float) * 128 / 255 + 127, atol=2)
    assert records["good.png"]["captions"] == ["first caption", "second caption"]
    assert records["cp1252_caption.jpg"]["captions"] == ["café crème"]
    assert records["empty_caption.jpg"]["captions"] == [""]
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["num_records"] == 10 and meta["written"] == 10


def test_rerun_skips_complete_shards_and_redoes_missing_ones(tmp_path):
    for i in range(6):
        Image.fromarray(photo(24, 32, i)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"photo {i}")
    out = tmp_path / "out"
    first = convert.convert(str(tmp_path), str(out), shard_size=2, num_workers=2, progress=False)
    assert first["shards_written"] == 3 and first["written"] == 6
    before = _records(out)
    again = convert.convert(str(tmp_path), str(out), shard_size=2, num_workers=0, progress=False)
    assert again["shards_resumed"] == 3 and again["shards_written"] == 0 and again["written"] == 6
    # An interrupted run: one shard never finished (its .tmp is still there, no completion record).
    shard = out / "images-00001-of-00003.array_record"
    shard.rename(shard.with_name(shard.name + ".tmp"))
    resumed = convert.convert(str(tmp_path), str(out), shard_size=2, num_workers=0, progress=False)
    assert resumed["shards_resumed"] == 2 and resumed["shards_written"] == 1
    after = _records(out)
    assert after.keys() == before.keys()
    assert all(after[k]["image"] == before[k]["image"] for k in before)
    with pytest.raises(UserError, match="other settings"):
        convert.convert(str(tmp_path), str(out), shard_size=3, num_workers=0, progress=False)
    redone = convert.convert(str(tmp_path), str(out), shard_size=3, num_workers=0,
                             overwrite=True, progress=False)
    assert redone["shards_written"] == 2 and len(list(out.glob("*.array_record"))) == 2
    # The input grew: the listing is cut into other shards; the old ones are not left behind.
    for i in (6, 7):
        Image.fromarray(photo(24, 32, i)).save(tmp_path / f"{i}.png")
    grown = convert.convert(str(tmp_path), str(out), shard_size=3, num_workers=0, progress=False)
    assert grown["written"] == 8 and sorted(p.name for p in out.glob("images-*")) == [
        f"images-0000{i}-of-00003.array_record" for i in range(3)]


def test_tables_jsonl_and_tars(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(photo(30, 30, i)).save(images / f"{i}.jpg")
    # CSV with a header; repeated rows add captions; a URL and a missing file are counted.
    (tmp_path / "list.csv").write_text(
        "caption,filepath\nzero,images/0.jpg\nzero again,images/0.jpg\none,images/1.jpg\n"
        "web,https://example.com/x.jpg\nmissing,images/nope.jpg\n")
    report = convert.convert(str(tmp_path / "list.csv"), str(tmp_path / "csv"), num_workers=0,
                             progress=False)
    records = _records(tmp_path / "csv")
    assert records["images/0.jpg"]["captions"] == ["zero", "zero again"]
    assert report["written"] == 2 and report["skipped"] == {
        "URL, not a local file (download the images first)": 1, "missing file": 1}
    # CC3M-style TSV: no header, caption first.
    (tmp_path / "cc3m.tsv").write_bytes(b"a caf\xe9\timages/2.jpg\nthree\timages/3.jpg\n")
    convert.convert(str(tmp_path / "cc3m.tsv"), str(tmp_path / "tsv"), num_workers=0, progress=False)
    assert _records(tmp_path / "tsv")["images/2.jpg"]["captions"] == ["a café"]
    # JSONL with a list of captions and a malformed line.
    (tmp_path / "list.jsonl").write_text(
        json.dumps({"image": "images/1.jpg", "caption": ["one", "uno"]}) + "\n{oops\n"
        + json.dumps({"image": str(images / "3.jpg"), "caption": "three"}) + "\n")
    report = convert.convert(str(tmp_path / "list.jsonl"), str(tmp_path / "jsonl"), num_workers=0,
                             progress=False)
    assert _records(tmp_path / "jsonl")["images/1.jpg"]["captions"] == ["one", "uno"]
    assert report["written"] == 2 and report["skipped"] == {"malformed JSONL line": 1}
    # webdataset: two tars, captions in .txt and .json; the second is cut off mid-way.
    shards = tmp_path / "wds"
    shards.mkdir()
    for t in range(2):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(3):
                members = {f"s{t}{i}.jpg": encode(photo(20, 28, i), "JPEG"),
                           f"s{t}{i}.txt" if i % 2 else f"s{t}{i}.json":
                               b"tar caption" if i % 2 else b'{"caption": "json caption"}'}
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        data = buf.getvalue()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # cut inside the second image
            cut = next(m.offset_data for m in tar if m.name == f"s{t}1.jpg") + 100
        (shards / f"{t:05d}.tar").write_bytes(data if t == 0 else data[:cut])
    report = convert.convert(str(shards), str(tmp_path / "tars"), num_workers=0, progress=False)
    records = _records(tmp_path / "tars")
    assert records["00000.tar:s00"]["captions"] == ["json caption"]
    assert records["00000.tar:s01"]["captions"] == ["tar caption"]
    assert report["written"] == 4 and set(records) == {"00000.tar:s00", "00000.tar:s01",
                                                       "00000.tar:s02", "00001.tar:s10"}
    assert report["skipped"] == {"damaged tar (read up to the damage)": 1}


def test_cli_reports_and_rejects_bad_input(tmp_path):
    for i in range(3):
        Image.fromarray(photo(20, 20, i)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    result = run_module("muse_jax.data.convert", f"--input={tmp_path}", f"--out={tmp_path / 'o'}",
                        "--num_workers=0", check=True)
    assert "wrote 3 of 4 images" in result.stdout and "not an image" in result.stdout
    result = run_module("muse_jax.data.convert", f"--input={tmp_path / 'missing'}",
                        f"--out={tmp_path / 'o2'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: --input={tmp_path / 'missing'} does not exist"


def test_out_holding_another_tools_files_is_refused_and_left_as_it_was(tmp_path):
    for i in range(2):
        Image.fromarray(photo(20, 20, i)).save(tmp_path / f"{i}.png")
    foreign = tmp_path / "embeddings"  # as text/precompute.py leaves it: no convert.json
    foreign.mkdir()
    (foreign / "metadata.json").write_text('{"format": "caption embeddings"}')
    (foreign / "emb-00000-of-00001.array_record").write_bytes(b"embeddings")
    with pytest.raises(UserError, match=r"--out .*embeddings is not empty and holds no "
                                        r"conversion \(emb-00000-of-00001.array_record, "
                                        r"metadata.json\); .*--overwrite"):
        convert.convert(str(tmp_path), str(foreign), num_workers=0, progress=False)
    assert (foreign / "metadata.json").read_text() == '{"format": "caption embeddings"}'
    assert sorted(p.name for p in foreign.iterdir()) == ["emb-00000-of-00001.array_record",
                                                         "metadata.json"]
    # An empty directory is fine; so is --overwrite on the foreign one.
    (tmp_path / "empty").mkdir()
    assert convert.convert(str(tmp_path), str(tmp_path / "empty"), num_workers=0,
                           progress=False)["written"] == 2
    assert convert.convert(str(tmp_path), str(foreign), num_workers=0, overwrite=True,
                           progress=False)["written"] == 2
    assert json.loads((foreign / "metadata.json").read_text())["written"] == 2


def test_tar_member_over_the_limit_is_skipped_unread_and_a_huge_caption_is_one_line(
        tmp_path, monkeypatch):
    from muse_jax.data import inputs

    monkeypatch.setattr(inputs, "MAX_TAR_MEMBER_BYTES", 4000)  # 3 GiB members, scaled down
    small, big = encode(photo(20, 20, 0), "PNG"), encode(photo(64, 64, 1), "BMP")
    assert len(small) < 4000 < len(big)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("a.png", small), ("a.txt", b"small"), ("b.bmp", big),
                           ("b.txt", b"big")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "00000.tar").write_bytes(buf.getvalue())
    report = convert.convert(str(tmp_path / "shards"), str(tmp_path / "out"), num_workers=0,
                             progress=False)
    assert report["written"] == 1 and report["skipped"] == {inputs.TOO_LARGE: 1}
    assert set(_records(tmp_path / "out")) == {"00000.tar:a"}

    Image.fromarray(photo(20, 20, 2)).save(tmp_path / "c.png")
    (tmp_path / "t.tsv").write_text(f"image\tcaption\nc.png\tshort\nc.png\t{'x' * 140_000}\n")
    with pytest.raises(UserError, match=r"t.tsv, line 3: field larger than field limit "
                                        r"\(131072\) \(a caption or path over 131,072"):
        convert.convert(str(tmp_path / "t.tsv"), str(tmp_path / "out2"), num_workers=0,
                        progress=False)
