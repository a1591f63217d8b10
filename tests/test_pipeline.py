"""The Grain pipeline: deterministic, split across processes, and resumable mid-epoch."""
import numpy as np
import pytest

from muse_jax import checkpoint
from muse_jax import config as config_lib
from muse_jax.data import pipeline, sources


def _config(**data):
    c = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    c.data.image_size = 32
    for k, v in data.items():
        c.data[k] = v
    return c


def _take(it, n):
    return [next(it)["image"] for _ in range(n)]


def test_batches_are_normalised_and_shaped():
    batch = next(pipeline.train_iterator(_config()))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0


def test_same_seed_same_batches_other_seed_others():
    a = _take(pipeline.train_iterator(_config()), 3)
    b = _take(pipeline.train_iterator(_config()), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = _config()
    c.seed = 1
    assert not np.array_equal(a[0], _take(pipeline.train_iterator(c), 1)[0])


def test_processes_get_disjoint_halves_of_the_global_batch():
    config = _config()
    single = next(pipeline.train_iterator(config, 0, 1))["image"]
    halves = [next(pipeline.train_iterator(config, i, 2))["image"] for i in range(2)]
    assert halves[0].shape == (4, 32, 32, 3)
    assert not any(np.array_equal(a, b) for a in halves[0] for b in halves[1])
    # Together the two processes see examples of the same shuffled stream a single one sees.
    flat = lambda x: {arr.tobytes() for arr in x}  # noqa: E731
    assert flat(np.concatenate(halves)) <= flat(np.concatenate(
        [single] + _take(pipeline.train_iterator(config, 0, 1), 2)))


def test_eval_batches_are_fixed_and_disjoint_from_training():
    config = _config(eval_size=32, eval_batch_size=16)
    a = list(pipeline.eval_batches(config))
    b = list(pipeline.eval_batches(config))
    assert len(a) == 2
    np.testing.assert_array_equal(a[1]["image"], b[1]["image"])
    train = {x.tobytes() for x in np.concatenate(_take(pipeline.train_iterator(config), 8))}
    assert not any(x.tobytes() in train for batch in a for x in batch["image"])


def test_iterator_state_restores_to_the_same_next_batch(tmp_path):
    config = _config()
    it = pipeline.train_iterator(config)
    _take(it, 3)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), every=1, keep=2)
    ckpt.save(3, {"x": np.zeros(2)}, it, force=True)
    ckpt.wait()
    expected = _take(it, 2)

    fresh = pipeline.train_iterator(config)
    ckpt.restore({"x": np.zeros(2)}, fresh)
    ckpt.close()
    for x, y in zip(expected, _take(fresh, 2)):
        np.testing.assert_array_equal(x, y)


def test_missing_and_empty_image_folders(tmp_path):
    config = _config(source="image_folder", path=str(tmp_path / "missing"))
    with pytest.raises(sources.DatasetError, match="does not exist"):
        pipeline.train_iterator(config)
    (tmp_path / "empty").mkdir()
    config.data.path = str(tmp_path / "empty")
    with pytest.raises(sources.DatasetError, match="holds 0 images"):
        pipeline.train_iterator(config)


def test_image_folder_resizes_crops_and_reads_captions(tmp_path):
    from PIL import Image
    for i in range(6):
        Image.fromarray(np.full((40, 60, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"image {i}\n")
    config = _config(source="image_folder", path=str(tmp_path), eval_size=2, eval_batch_size=2)
    source = sources.create(config.data, "eval", 0)
    assert len(source) == 2 and source[0]["caption"] == "image 4"
    batch = next(pipeline.eval_batches(config))
    assert batch["image"].shape == (2, 32, 32, 3)
    np.testing.assert_allclose(batch["image"][0], 40 * 4 / 127.5 - 1, atol=1e-6)
