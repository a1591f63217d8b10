"""Precomputed embeddings: the CLI writes ArrayRecord shards that EmbeddingRecords reads back."""
import pickle

import grain
import numpy as np
import pytest
from conftest import run_module

from muse_jax.data.shards import EmbeddingRecords
from muse_jax.errors import UserError
from muse_jax.text import create_encoder, default_config
from muse_jax.text.embeddings import precompute
from muse_jax.text.precompute import read_captions

CAPTIONS = ["a red square", "", "two blue circles on the left of a green triangle",
            "big yellow star " * 40, "a cat"]
CONFIG = """
import ml_collections
from muse_jax.text import default_config

def get_config():
    return ml_collections.ConfigDict({"text": default_config()})
"""
CONFIG_MISSING_T5 = CONFIG.replace(
    'return ml_collections.ConfigDict({"text": default_config()})',
    'c = ml_collections.ConfigDict({"text": default_config()})\n'
    '    c.text.update(encoder="t5", path="/nonexistent/flan-t5-xxl")\n'
    '    return c')


def test_cli_writes_shards_that_read_back_as_the_encoder_output(tmp_path):
    (tmp_path / "config.py").write_text(CONFIG)
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    out = tmp_path / "emb"
    result = run_module("muse_jax.text.precompute", f"--config={tmp_path / 'config.py'}",
                        f"--captions={tmp_path / 'captions.txt'}", f"--out={out}",
                        "--embedding_dtype=float32", "--shard_size=2", check=True)
    assert "encoding captions: 100%" in result.stderr  # the tqdm bar
    assert "1 of 5 prompts truncated" in result.stderr
    assert len(list(out.glob("embeddings-*-of-00003.array_record"))) == 3

    data = EmbeddingRecords(out)
    assert len(data) == 5 and data.dim == 384 and data.max_length == 32
    expected, masks = create_encoder(default_config()).encode(CAPTIONS)
    for i in (0, 1, 2, 3, 4, -1):
        item = data[i]
        assert item["caption"] == CAPTIONS[i]
        np.testing.assert_array_equal(item["mask"], masks[i])
        np.testing.assert_allclose(item["embedding"], expected[i], atol=1e-5)
    empty, empty_mask = data.empty_caption()
    np.testing.assert_allclose(empty, expected[1], atol=1e-5)
    np.testing.assert_array_equal(empty_mask, masks[1])
    with pytest.raises(IndexError):
        data[5]
    clone = pickle.loads(pickle.dumps(data))  # grain workers receive the source pickled
    assert clone[2]["caption"] == CAPTIONS[2]
    batch = grain.MapDataset.source(data).batch(2)[1]  # what the data pipeline will do
    assert batch["embedding"].shape == (2, 32, 384) and batch["mask"].shape == (2, 32)

    again = run_module("muse_jax.text.precompute", f"--config={tmp_path / 'config.py'}",
                       f"--captions={tmp_path / 'captions.txt'}", f"--out={out}")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines()[-1].startswith("error: ") and "--overwrite" in again.stderr


def test_cli_reports_a_missing_checkpoint_in_one_line(tmp_path):
    (tmp_path / "config.py").write_text(CONFIG_MISSING_T5)
    (tmp_path / "captions.txt").write_text("a red square\n")
    result = run_module("muse_jax.text.precompute", f"--config={tmp_path / 'config.py'}",
                        f"--captions={tmp_path / 'captions.txt'}", f"--out={tmp_path / 'out'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: T5 checkpoint directory '/nonexistent/flan-t5-xxl' does not exist")
    assert "config.json" in last and "model.safetensors" in last
    assert not (tmp_path / "out").exists()


def test_float16_records_are_smaller_and_close(tmp_path):
    out16 = precompute(default_config(), CAPTIONS[:3], tmp_path / "f16", "float16", shard_size=10)
    item = EmbeddingRecords(out16)[2]
    assert item["embedding"].dtype == np.float16 and item["mask"].sum() == 12
    ref, _ = create_encoder(default_config()).encode(CAPTIONS[2:3])
    np.testing.assert_allclose(item["embedding"].astype(np.float32), ref[0], atol=5e-3)


def test_captions_go_to_the_encoder_in_chunks_and_come_back_in_order(tmp_path, monkeypatch):
    from muse_jax.text import embeddings

    encoder = create_encoder(default_config())
    calls = []
    real_encode = type(encoder).encode
    monkeypatch.setattr(type(encoder), "encode",
                        lambda self, texts: calls.append(len(texts)) or real_encode(self, texts))
    captions = [f"{'a very long caption ' * (i % 4)}number {i}" for i in range(150)]
    row = encoder.max_length * encoder.dim * 4
    monkeypatch.setattr(embeddings, "CHUNK_BYTES", 2 * 32 * row + row // 2)
    config = default_config()
    config.batch_size = 32
    out = precompute(config, captions, tmp_path / "emb", "float32", shard_size=1000)
    # 64 captions a call (2 batches of 32: chunks of CHUNK_BYTES), then the empty caption.
    assert calls == [64, 64, 22, 1]
    data = EmbeddingRecords(out)
    expected, masks = encoder.encode(captions)
    for i in (0, 1, 63, 64, 100, 149):
        assert data[i]["caption"] == captions[i]
        np.testing.assert_array_equal(data[i]["mask"], masks[i])
        np.testing.assert_allclose(data[i]["embedding"], expected[i], atol=1e-5)


def test_caption_files(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("one\r\n\nthree\n")
    assert read_captions(path) == ["one", "", "three"]
    path.write_bytes(b"ok\n\xff\xfe bad\n")
    with pytest.raises(UserError, match="not UTF-8 \\(line 2"):
        read_captions(path)
    path.write_text("")
    with pytest.raises(UserError, match="is empty"):
        read_captions(path)
    with pytest.raises(UserError, match="not found"):
        read_captions(tmp_path / "missing.txt")
