"""muse_jax.categorical: inverse-CDF draws, checked token by token against float64 numpy and
in frequency against the distribution."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax import categorical

_CUT = float(jnp.finfo(jnp.float32).min)  # what the sampler's top-k writes for a cut token


def _logits(k: int, seed: int) -> np.ndarray:
    """Logits over k tokens within 2 nats of each other (every token's share of the quantiles
    is then far wider than float32's rounding of them), a quarter cut as top-k would cut them:
    the first two and the last among them, so blocks start and end with cut tokens."""
    r = np.random.default_rng(seed)
    logits = r.uniform(-1, 1, k).astype(np.float32)
    cut = r.random(k) < 0.25
    cut[[0, 1, k - 1]] = True
    return np.where(cut, _CUT, logits).astype(np.float32)


@pytest.mark.parametrize("k", [300, 8192, 64])  # a ragged last block, aMUSEd's codebook, one block
def test_each_token_is_drawn_over_its_own_quantiles_and_cut_tokens_never(k):
    logits = _logits(k, k)
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    upper = np.cumsum(p)
    lower = upper - p
    kept = np.flatnonzero(p > 0)
    # The middle of every kept token's interval of quantiles, and the two ends of [0, 1).
    quantiles = np.concatenate([(lower[kept] + upper[kept]) / 2, [0.0, 1.0 - 2.0 ** -24]])
    ids, log_probs = jax.jit(categorical.draw)(jnp.asarray(quantiles, jnp.float32),
                                              jnp.broadcast_to(logits, (len(quantiles), k)))
    ids = np.asarray(ids)
    np.testing.assert_array_equal(ids[:-2], kept)
    assert ids[-2] == kept[0] and ids[-1] == kept[-1]  # the first and last tokens drawn at all
    np.testing.assert_allclose(np.asarray(log_probs), np.log(p[ids]), rtol=2e-6, atol=2e-6)


def test_draws_follow_the_softmax_and_repeat_for_a_key():
    logits = jnp.asarray([[2.0, 0.0, _CUT, -1.0, 1.0]] * 4)  # 4 positions, the same 5 tokens
    draws = 50_000
    ids, log_probs = jax.jit(jax.vmap(categorical.sample, in_axes=(0, None)))(
        jax.random.split(jax.random.key(0), draws), logits)
    p = np.asarray(jax.nn.softmax(logits[0]))
    counts = np.bincount(np.asarray(ids).ravel(), minlength=5)
    n = ids.size
    # Each count within 4.5 standard deviations of n p (a binomial count); none for the cut token.
    assert counts[2] == 0
    np.testing.assert_array_less(np.abs(counts - n * p), 4.5 * np.sqrt(n * p * (1 - p)) + 1e-9)
    np.testing.assert_allclose(np.asarray(log_probs), np.log(p[np.asarray(ids)]), rtol=1e-6)
    again, _ = categorical.sample(jax.random.key(7), logits)
    np.testing.assert_array_equal(again, categorical.sample(jax.random.key(7), logits)[0])
