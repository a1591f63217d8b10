"""Base training from precomputed caption embeddings and image tokens: same losses, clear errors."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import one_device, one_device_mesh, run_module

from muse_jax import config as config_lib
from muse_jax import metrics, tasks, training
from muse_jax.config import ConfigError
from muse_jax.data import pipeline, sources
from muse_jax.data.shards import EmbeddingRecords, TokenRecords
from muse_jax.data.tokens import DistinctImages, precompute_tokens
from muse_jax.errors import UserError
from muse_jax.tasks.vqgan import load_tokenizer
from muse_jax.text.embeddings import precompute

TRAIN_SIZE = 16  # two tiny batches; eval is the tiny config's 32 examples


def _base(tokenizer_dir, dirs=None, **overrides):
    c = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "tiny")
    c.tokenizer.workdir = str(tokenizer_dir)
    c.data.shapes_train_size = TRAIN_SIZE
    for key, value in {**(dirs or {}), **overrides}.items():
        block, name = key.split(".")
        c[block][name] = value
    return c


@pytest.fixture(scope="module")
def dirs(tokenizer_dir, tmp_path_factory):
    """Float32 embeddings and tokens of both splits of the tiny config, as data.* keys."""
    root = tmp_path_factory.mktemp("precomputed")
    config = _base(tokenizer_dir)
    out = {}
    for split in ("train", "eval"):
        captions = sources.captions(sources.create_finite(config.data, split, config.seed))
        out[f"data.{split}_text_embeddings"] = str(precompute(
            config.text, captions, root / f"{split}_emb", "float32", shard_size=10))
        out[f"data.{split}_tokens"] = str(precompute_tokens(
            config, split, root / f"{split}_tokens", load_tokenizer, batch_size=16, shard_size=10))
    return out


def _first_batches(config):
    task = tasks.create(config)
    steps = task.load(one_device_mesh())
    train_batch = steps.prepare_batch(next(pipeline.train_iterator(
        config, keep_caption=task.uses_captions)))
    eval_batch = steps.prepare_batch(next(pipeline.eval_batches(
        config, keep_caption=task.uses_captions)))
    return task, steps, train_batch, eval_batch


def _assert_same_inputs(got, expected, what):
    """FrozenModels.inputs()'s tokens, emb, text_mask, empty emb, empty mask."""
    for name, a, b in zip(("tokens", "emb", "text_mask", "empty", "empty_mask"), got, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=f"{what}: {name}")


@pytest.mark.slow
def test_precomputed_step_matches_the_frozen_models(tokenizer_dir, dirs):
    task, steps, train_batch, eval_batch = _first_batches(_base(tokenizer_dir))
    state = nn.unbox(task.init_state(jax.random.key(0)))
    rng = jax.random.key(1)
    _, expected = jax.jit(steps.train_step)(state, train_batch, rng, steps.frozen)
    expected_train = steps.models.inputs(train_batch, steps.frozen)
    expected_eval = steps.models.inputs(eval_batch, steps.frozen)

    # (eval.num_samples 0: no sample grid, whose images the tokenizer would decode)
    no_grid = {"eval.num_samples": 0}
    task, steps, train_batch, eval_batch = _first_batches(_base(tokenizer_dir, dirs, **no_grid))
    models = steps.models
    assert models.text_encoder is None and models.tokenizer is None  # neither loaded nor run
    assert set(train_batch) == {"tokens", "text_emb", "text_mask"}
    assert train_batch["tokens"].shape == (8, 16, 16) and train_batch["tokens"].dtype == np.uint16
    assert train_batch["text_emb"].shape == (8, 40, 384)  # base_shapes text.max_length
    _, got = jax.jit(steps.train_step)(state, train_batch, rng, steps.frozen)
    for key in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, err_msg=key)
    _assert_same_inputs(models.inputs(eval_batch, steps.frozen), expected_eval, "eval")

    # One kind precomputed, the other from its frozen model: the same inputs again.
    for kind in ("text_embeddings", "tokens"):
        keys = {k: v for k, v in dirs.items() if k.endswith(kind)}
        _, steps, train_batch, _ = _first_batches(_base(tokenizer_dir, keys, **no_grid))
        assert (steps.models.text_encoder is None, steps.models.tokenizer is None) == (
            kind == "text_embeddings", kind == "tokens")
        _assert_same_inputs(steps.models.inputs(train_batch, steps.frozen), expected_train, kind)


def test_records_hold_the_split_in_source_order(tokenizer_dir, dirs):
    source = sources.create(_base(tokenizer_dir).data, "eval", 0)
    tokens = TokenRecords(dirs["data.eval_tokens"])
    embeddings = EmbeddingRecords(dirs["data.eval_text_embeddings"])
    assert len(tokens) == len(embeddings) == len(source) == 32
    assert tokens.grid_size == 16 and tokens.codebook_size == 64
    for i in (0, 13, 31):
        assert tokens[i]["caption"] == embeddings[i]["caption"] == source[i]["caption"]


@pytest.mark.parametrize("keep_caption", [True, False])
def test_batches_read_a_batch_at_a_time_are_the_example_chains(tokenizer_dir, dirs, keep_caption):
    """`train_iterator` reads a precomputed split with PrecomputedBatches: the same rows, in the
    same order, epochs after the first too, for each process of one and of two."""
    config = _base(tokenizer_dir, dirs)
    data = config.data
    source = pipeline.create_source(data, "train", config.seed)
    assert isinstance(source, pipeline.Precomputed) and len(source) == TRAIN_SIZE
    for count in (1, 2):
        for index in range(count):
            fast = pipeline.PrecomputedBatches(source, config.seed, data.batch_size, index, count,
                                               keep_caption)
            chain = pipeline.example_batches(source, data, config.seed, index, count,
                                             keep_caption)
            for step in range(5):  # 2 global batches an epoch
                got, want = fast[step], chain[step]
                assert sorted(got) == sorted(want), (count, index, step)
                assert ("caption" in got) == keep_caption
                for key in want:
                    assert got[key].dtype == want[key].dtype, key
                    np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key} {step}")
    # And the training iterator gives those batches.
    first = next(pipeline.train_iterator(config, keep_caption=True))
    fast = pipeline.PrecomputedBatches(source, config.seed, data.batch_size, 0, 1, True)[0]
    assert list(first["caption"]) == list(fast["caption"])


def test_mismatched_directories_give_one_line_errors(tokenizer_dir, dirs, tmp_path):
    def raises(error, match, fn):
        with pytest.raises(error, match=match) as info:
            fn()
        assert "\n" not in str(info.value)

    train_iterator = lambda **kw: pipeline.train_iterator(_base(tokenizer_dir, dirs, **kw))  # noqa: E731
    load = lambda **kw: tasks.create(_base(tokenizer_dir, dirs, **kw)).load(one_device_mesh())  # noqa: E731
    eval_emb, eval_tokens = dirs["data.eval_text_embeddings"], dirs["data.eval_tokens"]
    raises(UserError, f"{eval_emb} holds 32 records but the train split has 16 examples",
           lambda: train_iterator(**{"data.train_text_embeddings": eval_emb}))
    raises(UserError, f"{eval_tokens} was not computed from this train split: record 0 has caption",
           lambda: train_iterator(**{"data.train_tokens": eval_tokens, "data.shapes_train_size": 32,
                                     "data.train_text_embeddings": ""}))
    raises(UserError, "holds no precomputed image tokens",
           lambda: train_iterator(**{"data.train_tokens": str(tmp_path)}))
    raises(ConfigError, "data.train_tokens and data.eval_tokens must both name",
           lambda: tasks.create(_base(tokenizer_dir, {"data.train_tokens": eval_tokens})).check_config())
    raises(ConfigError, "holds 384-wide embeddings, model.text_dim is 512",
           lambda: load(**{"model.text_dim": 512}))
    raises(ConfigError, "holds embeddings of 40 tokens, text.max_length is 16",
           lambda: load(**{"text.max_length": 16}))
    raises(ConfigError, "holds 16x16 token grids, model.grid_size is 8",
           lambda: load(**{"model.grid_size": 8}))
    raises(ConfigError, "holds tokens of a 64-code tokenizer, model.codebook_size is 128",
           lambda: load(**{"model.codebook_size": 128}))


@pytest.mark.slow
def test_train_and_evaluate_from_precomputed_inputs(tokenizer_dir, dirs, tmp_path):
    # No tokenizer at tokenizer.workdir: a run from precomputed tokens needs one only to decode
    # its sample grid, and goes on without the grid.
    config = _base(tokenizer_dir, dirs, **{"tokenizer.workdir": str(tmp_path / "none"),
                                           "eval.num_samples": 2})
    result = training.train_and_evaluate(config, str(tmp_path / "base"), devices=one_device())
    assert not (tmp_path / "base" / "samples.png").exists()
    assert np.isfinite(result["eval_loss_mask50"]) and 0.0 < result["eval_mode_accuracy"] <= 1.0
    logged = metrics.read_jsonl(str(tmp_path / "base" / "metrics.jsonl"))
    assert all(np.isfinite(logged[s]["loss"]) for s in range(1, 5))


@pytest.mark.slow
def test_clis_write_a_split(tokenizer_dir, dirs, tmp_path):
    config = ["--config=configs/base_shapes.py:tiny", f"--config.tokenizer.workdir={tokenizer_dir}"]
    result = run_module("muse_jax.data.precompute_tokens", *config, "--split=eval",
                        f"--out={tmp_path / 'tokens'}", "--batch_size=8", check=True)
    assert "tokenising eval: 100%" in result.stderr  # the tqdm bar
    expected = TokenRecords(dirs["data.eval_tokens"])
    written = TokenRecords(tmp_path / "tokens")
    assert written.metadata["tokenizer_workdir"] == str(tokenizer_dir)
    for i in (0, 31):
        np.testing.assert_array_equal(written[i]["tokens"], expected[i]["tokens"])
    result = run_module("muse_jax.text.precompute", *config, "--split=eval",
                        f"--out={tmp_path / 'emb'}", check=True)
    assert EmbeddingRecords(tmp_path / "emb")[31]["caption"] == expected[31]["caption"]
    endless = run_module("muse_jax.data.precompute_tokens", *config, "--split=train",
                         "--config.data.shapes_train_size=0", f"--out={tmp_path / 'x'}")
    assert endless.returncode == 2 and "Traceback" not in endless.stderr
    assert endless.stderr.strip().splitlines()[-1].startswith(
        "error: the shapes train split is endless: set --config.data.shapes_train_size")


def test_distinct_images_are_encoded_once_and_handed_back_in_order():
    encoded = []  # the real (non-padding) images of each call, by value

    def encode(images):
        assert len(images) == 2  # the last batch too: one compiled shape
        encoded.append([int(v) for v in images[:, 0, 0, 0] if v])  # padding rows are zeros
        return images[:, 0, 0, :1].astype(np.uint16) * 10  # "tokens": ten times the value

    values = [1, 2, 1, 3, 2, 4, 5, 1, 6]
    distinct = DistinctImages(encode, batch_size=2, remember=2)
    out = []
    for i, v in enumerate(values):
        out += distinct.add(f"caption {i}", np.full((2, 2, 3), v, np.float32))
    out += distinct.flush()
    assert [caption for caption, _ in out] == [f"caption {i}" for i in range(len(values))]
    assert [int(tokens[0]) for _, tokens in out] == [10 * v for v in values]
    # 1 and 2 are repeated while remembered; after 3 and 4 only the latest two distinct images
    # (3, 4) are, so 1 is encoded again; 6 goes alone, padded.
    assert encoded == [[1, 2], [3, 4], [5, 1], [6]]
