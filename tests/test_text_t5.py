"""The Flax T5 encoder against transformers' PyTorch T5EncoderModel, imported from local dirs."""
import copy
import importlib.util
import json
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from muse_jax import parallel
from muse_jax.text import CheckpointError, create_encoder, t5

WORDS = "a an the red green blue square circle triangle small big on left right of and".split()


def make_t5_dir(path, feed_forward_proj: str, seed: int = 0):
    """A tiny random T5EncoderModel + a word-level T5 tokenizer, saved as transformers would."""
    torch.manual_seed(seed)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -3.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    config = transformers.T5Config(
        vocab_size=len(vocab) + 3, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        feed_forward_proj=feed_forward_proj, dropout_rate=0.0)
    model = transformers.T5EncoderModel(config).eval()
    model.save_pretrained(path)
    transformers.T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(path)
    return model


def padded_batch(rng, vocab_size, lengths, max_length):
    ids = np.zeros((len(lengths), max_length), np.int32)
    mask = np.zeros((len(lengths), max_length), bool)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(3, vocab_size, n)
        ids[row, n - 1] = 1  # </s>
        mask[row, :n] = True
    return ids, mask


@pytest.fixture(scope="module", params=["relu", "gated-gelu"], ids=["v1.0", "v1.1"])
def t5_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"t5_{request.param}")
    return path, make_t5_dir(path, request.param)


def test_hidden_states_match_transformers_on_a_padded_batch(t5_dir):
    path, model = t5_dir
    module, params = t5.load(path)
    assert module.config.gated == (model.config.feed_forward_proj == "gated-gelu")
    ids, mask = padded_batch(np.random.default_rng(0), model.config.vocab_size, [20, 7, 1, 13], 20)
    ours = np.asarray(module.apply({"params": params}, ids, mask))
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids).long(),
                    attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    diff = np.abs(ours - ref).max()
    print(f"T5 {model.config.feed_forward_proj} max abs diff (all positions): {diff:.3g}")
    assert ours.shape == ref.shape == (4, 20, 32)
    assert diff < 1e-4


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    for buckets, distance in ((32, 128), (8, 16)):
        ours = t5.relative_position_buckets(300, buckets, distance)
        pos = torch.arange(300)
        ref = T5Attention._relative_position_bucket(pos[None, :] - pos[:, None], bidirectional=True,
                                                    num_buckets=buckets, max_distance=distance)
        np.testing.assert_array_equal(ours, ref.numpy())


def test_sharded_safetensors_and_pytorch_bin_give_the_same_params(t5_dir, tmp_path):
    path, model = t5_dir
    _, reference = t5.load(path)
    sharded, pickled = tmp_path / "sharded", tmp_path / "bin"
    model.save_pretrained(sharded, max_shard_size="20KB")
    _save_bin(model, pickled)
    for d in (sharded, pickled):
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (d / f).write_bytes((path / f).read_bytes())
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]) > 5
    for d in (sharded, pickled):
        _, params = t5.load(d)
        jax.tree.map(np.testing.assert_array_equal, params, reference)


def test_bfloat16_safetensors_load(t5_dir, tmp_path):
    path, model = t5_dir
    _, reference = t5.load(path)
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path)
    _, params = t5.load(tmp_path, jnp.bfloat16)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b.astype(jnp.bfloat16)), params, reference)


def _save_bin(model, path):
    """pytorch_model.bin as older checkpoints ship it (transformers 5 writes only safetensors)."""
    path.mkdir()
    (path / "config.json").write_text(model.config.to_json_string())
    torch.save(model.state_dict(), path / "pytorch_model.bin")


def test_partial_directory_lists_the_missing_files_in_one_line(t5_dir, tmp_path):
    path, _ = t5_dir
    (tmp_path / "config.json").write_bytes((path / "config.json").read_bytes())
    config = ml_collections.ConfigDict(dict(encoder="t5", path=str(tmp_path), max_length=16,
                                            dtype="float32", batch_size=8))
    with pytest.raises(CheckpointError) as e:
        create_encoder(config)
    msg = str(e.value)
    assert "\n" not in msg and "model.safetensors" in msg and "tokenizer.json" in msg
    sharded = tmp_path / "sharded"
    t5_dir[1].save_pretrained(sharded, max_shard_size="20KB")
    (sharded / "tokenizer.json").write_bytes((path / "tokenizer.json").read_bytes())
    first_shard = sorted(sharded.glob("model-*.safetensors"))[0]
    first_shard.unlink()
    with pytest.raises(CheckpointError, match=first_shard.name):
        t5.load(sharded)


def test_a_spiece_model_without_sentencepiece_says_what_to_install(t5_dir, tmp_path, monkeypatch):
    """t5-v1_1-xxl ships spiece.model but no tokenizer.json; transformers then needs sentencepiece."""
    from transformers.convert_slow_tokenizer import import_protobuf

    path, _ = t5_dir
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).write_bytes((path / f).read_bytes())
    proto = import_protobuf().ModelProto()
    for piece, kind in (("<pad>", 3), ("</s>", 3), ("<unk>", 2), ("▁a", 1)):
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, 0.0, kind
    (tmp_path / "spiece.model").write_bytes(proto.SerializeToString())
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sentencepiece" else real(name, *a))
    config = ml_collections.ConfigDict(dict(encoder="t5", path=str(tmp_path), max_length=16,
                                            dtype="float32", batch_size=8))
    with pytest.raises(CheckpointError, match=r"spiece.model only.*pip install sentencepiece"):
        create_encoder(config)


def test_encoder_on_an_8_device_mesh_matches_one_device(t5_dir, caplog):
    path, _ = t5_dir
    config = ml_collections.ConfigDict(dict(encoder="t5", path=str(path), max_length=16,
                                            dtype="float32", batch_size=8))
    mesh = parallel.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    prompts = ["a red square", "", "the big blue circle on the left of a small green triangle " * 3]
    plain, sharded = create_encoder(config), create_encoder(config, mesh)
    kernel = sharded.params["layers_0"]["mlp"]["wo"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    with caplog.at_level(logging.WARNING):
        (a, mask_a), (b, mask_b) = plain.encode(prompts), sharded.encode(prompts)
    assert "1 of 3 prompts truncated to max_length=16" in caplog.text
    np.testing.assert_array_equal(mask_a, mask_b)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert mask_a[1].sum() == 1 and mask_a[2].all()  # "" is just </s>; the long one is full


def test_t5_xxl_encoder_shards_over_fsdp_and_tensor_without_allocating():
    mesh = parallel.create_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    abstract = parallel.abstract_sharded(t5.init_fn(t5.T5_XXL, jnp.bfloat16), mesh)
    count = sum(x.size for x in jax.tree.leaves(abstract))
    per_device = parallel.per_device_bytes(abstract)
    print(f"T5-XXL encoder: {count:,} params, {per_device / 2**30:.3f} GiB per device in bf16 on 8 devices")
    assert 4.6e9 < count < 4.8e9
    assert per_device <= count * 2 / 8 * 1.01  # everything but the norms is split 8 ways
