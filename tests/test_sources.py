"""Real-image sources in the Grain pipeline: ArrayRecord and TFDS, bad files, determinism, resume."""
import io

import grain
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from image_files import encode, photo, write_zoo

from muse_jax import config as config_lib
from muse_jax.data import convert, image_records, pipeline, shards, sources, transforms
from muse_jax.errors import UserError


def _config(**data):
    c = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    c.data.update(image_size=32, batch_size=8, eval_size=4, eval_batch_size=4, min_size=32,
                  max_aspect_ratio=3.0)
    c.data.update(data)
    return c


def _write(directory, images: list[bytes], captions=None) -> str:
    """A converted-images directory holding `images` as they are (even undecodable ones)."""
    directory.mkdir(parents=True)
    records = [image_records.serialize(b, (captions or {}).get(i, [f"image {i}"]), 1, 1, str(i))
               for i, b in enumerate(images)]
    half = len(records) // 2
    shards.write_records(directory / "images-00000-of-00002.array_record", records[:half])
    shards.write_records(directory / "images-00001-of-00002.array_record", records[half:])
    shards.write_metadata(directory, {"format": image_records.FORMAT}, [
        {"file": "images-00000-of-00002.array_record", "records": half},
        {"file": "images-00001-of-00002.array_record", "records": len(records) - half}])
    return str(directory)


def _photos(n: int, bad=()) -> list[bytes]:
    """n JPEG/PNG photos of varied shapes; indices in `bad` are corrupt, 1x1 or 4:1 instead."""
    out = []
    for i in range(n):
        h, w = [(40, 56), (56, 40), (48, 48)][i % 3]
        out.append(encode(photo(h, w, i), "JPEG" if i % 2 else "PNG"))
    for k, i in enumerate(bad):
        out[i] = [b"\xff\xd8\xff garbage", encode(photo(1, 1), "PNG"),
                  encode(photo(40, 160, i), "PNG"), out[i][:len(out[i]) // 3]][k % 4]
    return out


def _batches(config, index, count, n):
    it = pipeline.train_iterator(config, index, count)
    return [next(it)["image"] for _ in range(n)]


def test_same_batches_on_1_2_and_4_processes(tmp_path):
    config = _config(source="array_record", path=_write(tmp_path / "d", _photos(20, bad=(3, 7, 8, 15))))
    single = _batches(config, 0, 1, 4)  # 32 examples: more than one epoch of 16
    for count in (2, 4):
        parts = [_batches(config, i, count, 4) for i in range(count)]
        for step in range(4):
            np.testing.assert_array_equal(np.concatenate([p[step] for p in parts]), single[step])
    other = _config(source="array_record", path=config.data.path)
    other.seed = 1
    assert not np.array_equal(_batches(other, 0, 1, 1)[0], single[0])


def test_resumed_iterator_continues_mid_epoch(tmp_path):
    config = _config(source="array_record", path=_write(tmp_path / "d", _photos(24, bad=(5,))))
    it = pipeline.train_iterator(config, keep_caption=True)
    next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    fresh = pipeline.train_iterator(config, keep_caption=True)
    fresh.set_state(state)
    for want, got in zip(expected, (next(fresh) for _ in range(2))):
        np.testing.assert_array_equal(want["image"], got["image"])
        assert list(want["caption"]) == list(got["caption"])


def test_unusable_examples_are_replaced_and_counted(tmp_path):
    bad = (1, 4, 6, 9)  # corrupt, 1x1, 4:1, truncated
    path = _write(tmp_path / "d", _photos(12, bad=bad))
    source = sources.create(_config(source="array_record", path=path, eval_size=0).data, "train", 0)
    checked = pipeline.Checked(grain.MapDataset.source(source), transforms.Filter(32, 3.0))
    examples = [checked[i] for i in range(len(checked))]
    assert [int(e["_skipped"]) for e in examples] == [int(i in bad) for i in range(12)]
    assert all(e["caption"] not in {f"image {i}" for i in bad} for e in examples)
    assert examples[1]["caption"] == "image 2" and examples[4]["caption"] == "image 5"
    counter = pipeline.CountSkips("train")
    batch = counter({"image": np.zeros((3, 2)), "_skipped": np.array([1, 0, 1]),
                     "_repaired": np.array([0, 1, 0])})
    assert set(batch) == {"image"} and (counter.skipped, counter.repaired, counter.examples) == (2, 1, 3)
    # Nothing usable at all: one line saying what to check, not an endless loop.
    hopeless = pipeline.Checked(grain.MapDataset.source(source), transforms.Filter(1000, 0))
    with pytest.raises(UserError, match="min_size"):
        hopeless[0]


def test_training_on_a_folder_of_bad_files_never_crashes(tmp_path):
    write_zoo(tmp_path / "zoo")
    config = _config(source="image_folder", path=str(tmp_path / "zoo"), eval_size=0)
    it = pipeline.train_iterator(config)
    batches = [next(it)["image"] for _ in range(4)]  # 32 examples: two epochs of 16 files
    assert all(b.shape == (8, 32, 32, 3) and np.isfinite(b).all() and np.abs(b).max() <= 1 for b in batches)


def test_converted_photos_train_and_eval_with_one_caption_each(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, data in enumerate(_photos(10)):
        (folder / f"{i:02d}.{'jpg' if i % 2 else 'png'}").write_bytes(data)
        (folder / f"{i:02d}.txt").write_text(f"first {i}\nsecond {i}\n")
    convert.convert(str(folder), str(tmp_path / "out"), num_workers=0, progress=False)
    config = _config(source="array_record", path=str(tmp_path / "out"))
    it = pipeline.train_iterator(config, keep_caption=True)
    seen = [c for _ in range(6) for c in next(it)["caption"]]
    assert {c.split()[0] for c in seen} == {"first", "second"}  # one of several, drawn per example
    eval_batch = next(pipeline.eval_batches(config, keep_caption=True))
    assert list(eval_batch["caption"]) == [f"first {i}" for i in range(6, 10)]
    assert eval_batch["image"].shape == (4, 32, 32, 3)
    assert sources.create(config.data, "train", 0).get_caption(0) == "first 0"
    config.data.path = str(folder)  # not converted
    with pytest.raises(UserError, match="holds no converted images .*muse_jax.data.convert"):
        pipeline.train_iterator(config)


def test_preprocess_flips_only_when_asked_and_filter_reasons():
    image = photo(32, 32, 3)
    plain = transforms.Preprocess(32, random_crop=True)
    flipping = transforms.Preprocess(32, random_crop=True, random_flip=True)
    outs = [flipping({"image": image, "caption": ""}, np.random.default_rng(s))["image"] for s in range(8)]
    unflipped = image.astype(np.float32) / 127.5 - 1
    assert any(np.array_equal(o, unflipped[:, ::-1]) for o in outs)
    assert all(np.array_equal(plain({"image": image, "caption": ""}, np.random.default_rng(s))["image"],
                              unflipped) for s in range(8))
    check = transforms.Filter(min_size=32, max_aspect_ratio=2.0)
    assert check.reason({"image": np.zeros((31, 40, 3), np.uint8)}).startswith("smaller")
    assert check.reason({"image": np.zeros((32, 70, 3), np.uint8)}).startswith("aspect")
    assert check.reason({"image": None, "note": "corrupt"}) == "corrupt"
    assert check.reason({"image": np.zeros((32, 64, 3), np.uint8)}) == ""


class MuseTinyCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A COCO-captions-shaped TFDS dataset: image + a sequence of caption texts."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 10), "val": self._generate_examples(10, 4)}

    def _generate_examples(self, start, n):
        for i in range(start, start + n):
            # Encoded bytes, not an array: tfds would import TensorFlow to encode one.
            image = io.BytesIO(encode(photo(40, 48, i), "PNG"))
            yield i, {"image": image, "captions": {"text": [f"one {i}", f"two {i}"]}}


def test_tfds_source_reads_a_prepared_dataset_and_explains_unprepared_ones(tmp_path):
    MuseTinyCaptions(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    config = _config(source="tfds", tfds_name="muse_tiny_captions", path=str(tmp_path),
                     tfds_eval_split="val")
    batch = next(pipeline.train_iterator(config, keep_caption=True))
    assert batch["image"].shape == (8, 32, 32, 3)
    assert all(c.split()[0] in ("one", "two") for c in batch["caption"])
    eval_batch = next(pipeline.eval_batches(config, keep_caption=True))
    assert sorted(eval_batch["caption"]) == [f"one {i}" for i in range(10, 14)]
    config = _config(source="tfds", tfds_name="coco_captions/2014", path=str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"not prepared in .*tfds build coco_captions/2014 "
                                        r".*--file_format=array_record"):
        pipeline.train_iterator(config)
    config.data.tfds_name = "no_such_dataset_xyz"
    with pytest.raises(UserError, match="no_such_dataset_xyz is neither a TFDS catalog dataset"):
        pipeline.train_iterator(config)


def test_shapes_are_jittered_unless_the_config_says_otherwise():
    """A run saved before `data.shapes_jitter` existed drew jittered scenes; evaluations and
    the demo's report read its config the same way (`sources.shapes_jitter`)."""
    data = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "tiny").data
    assert sources.shapes_jitter(data) and sources.create(data, "eval", 0).jitter
    data.shapes_jitter = False
    canonical = sources.create(data, "eval", 0)
    assert not sources.shapes_jitter(data) and not canonical.jitter
    saved = ml_collections.ConfigDict({k: v for k, v in data.to_dict().items()
                                       if k != "shapes_jitter"})
    jittered = sources.create(saved, "eval", 0)
    assert sources.shapes_jitter(saved) and jittered.jitter
    assert jittered.objects(0) == canonical.objects(0)
    assert not np.array_equal(jittered[0]["image"], canonical[0]["image"])
