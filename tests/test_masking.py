"""Mask-rate distribution, masks, schedule, the masked loss, caption and caption-token dropout."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from muse_jax import masking


def test_mask_rate_follows_the_truncated_arccos_law():
    r = np.sort(np.asarray(masking.sample_mask_rate(jax.random.key(0), (100_000,))))
    assert r.min() >= 0.0 and r.max() <= 1.0
    assert abs(r.mean() - 2 / np.pi) < 0.005
    cdf = 2 / np.pi * np.arcsin(r)
    ks = np.max(np.abs(cdf - np.arange(1, r.size + 1) / r.size))
    assert ks < 0.01  # Kolmogorov-Smirnov; a uniform rate would give ~0.14


def test_random_mask_counts_are_exact():
    rate = jnp.array([0.0, 0.1, 0.5, 0.99, 1.0])
    mask = masking.random_mask(jax.random.key(1), 5, 256, rate)
    assert mask.dtype == jnp.bool_
    assert np.asarray(mask.sum(-1)).tolist() == [1, 26, 128, 253, 256]
    other = masking.random_mask(jax.random.key(2), 5, 256, rate)
    assert not np.array_equal(mask, other)


def test_cosine_schedule_and_counts():
    assert float(masking.cosine_schedule(0.0)) == 1.0
    assert float(masking.cosine_schedule(1.0)) == pytest.approx(0.0, abs=1e-6)
    counts = [int(masking.num_masked(s, 8, 256)) for s in range(8)]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 0 and counts[0] < 256


def test_loss_ignores_unmasked_positions():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((2, 6, 10)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 10, (2, 6)))
    mask = jnp.array([[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]], bool)
    loss, aux = masking.masked_cross_entropy(logits, targets, mask)
    # Unmasked targets changed (even to the argmax): nothing moves.
    cheat = jnp.where(mask, targets, jnp.argmax(logits, -1))
    loss2, aux2 = masking.masked_cross_entropy(logits, cheat, mask)
    assert float(loss) == float(loss2) and float(aux["accuracy"]) == float(aux2["accuracy"])
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    np.testing.assert_allclose(loss, (expected[0, 0] + expected[0, 1] + expected[1, 3]) / 3, rtol=1e-6)


def test_label_smoothing_matches_optax():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.standard_normal((1, 4, 8)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 8, (1, 4)))
    mask = jnp.ones((1, 4), bool)
    loss, _ = masking.masked_cross_entropy(logits, targets, mask, label_smoothing=0.1)
    labels = optax.smooth_labels(jax.nn.one_hot(targets, 8), 0.1)
    np.testing.assert_allclose(loss, optax.softmax_cross_entropy(logits, labels).mean(), rtol=1e-6)
    assert float(loss) != float(masking.masked_cross_entropy(logits, targets, mask)[0])


def test_caption_dropout_uses_the_empty_caption_at_the_rate():
    n, length, dim = 20_000, 4, 3
    emb = jnp.ones((n, length, dim))
    mask = jnp.ones((n, length), bool)
    empty_emb = jnp.full((length, dim), 7.0)
    empty_mask = jnp.array([True, True, False, False])
    out, out_mask = masking.drop_captions(jax.random.key(0), emb, mask, empty_emb, empty_mask, 0.1)
    dropped = np.asarray(jnp.all(out == 7.0, axis=(1, 2)))
    assert abs(dropped.mean() - 0.1) < 0.01
    assert np.all(np.asarray(out)[~dropped] == 1.0)
    assert np.array_equal(np.asarray(out_mask)[dropped][0], [True, True, False, False])
    none, _ = masking.drop_captions(jax.random.key(0), emb, mask, empty_emb, empty_mask, 0.0)
    assert np.all(np.asarray(none) == 1.0)


def test_text_token_dropout_hides_words_at_the_rate_but_never_the_first_or_padding():
    n = 20_000
    mask = jnp.array([[True] * 6 + [False] * 2] * n)  # 6 words, 2 of padding
    out = np.asarray(masking.drop_text_tokens(jax.random.key(0), mask, 0.25))
    assert out[:, 0].all()  # the first token stays: no caption is emptied
    assert not out[:, 6:].any()  # padding stays hidden
    assert abs(1.0 - out[:, 1:6].mean() - 0.25) < 0.01  # the other words go at the rate
    assert abs(out[:, 1].mean() - out[:, 5].mean()) < 0.02  # wherever they stand
    assert np.array_equal(np.asarray(masking.drop_text_tokens(jax.random.key(0), mask, 0.0)), mask)
