"""Attention against a dense NumPy reference, masks, and fully masked rows."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.models.attention import MultiHeadAttention, dot_product_attention


def _reference(q, k, v, mask):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def _qkv(seed=0, b=2, lq=5, lk=7, h=3, d=4):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in ((b, lq, h, d), (b, lk, h, d), (b, lk, h, d))]


def test_matches_dense_reference_with_a_key_mask():
    q, k, v = _qkv()
    mask = np.ones((2, 1, 1, 7), bool)
    mask[0, ..., 4:] = False
    np.testing.assert_allclose(dot_product_attention(q, k, v, mask), _reference(q, k, v, mask), atol=1e-5)
    np.testing.assert_allclose(dot_product_attention(q, k, v), _reference(q, k, v, np.ones(mask.shape, bool)),
                               atol=1e-5)


def test_masked_keys_do_not_matter():
    q, k, v = _qkv()
    mask = np.ones((2, 1, 1, 7), bool)
    mask[:, ..., 5:] = False
    k2, v2 = k.copy(), v.copy()
    k2[:, 5:], v2[:, 5:] = 100.0, -100.0
    np.testing.assert_allclose(dot_product_attention(q, k, v, mask), dot_product_attention(q, k2, v2, mask),
                               atol=1e-6)


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = _qkv()
    mask = np.ones((2, 1, 5, 7), bool)
    mask[1, :, 2] = False
    out = np.asarray(dot_product_attention(q, k, v, mask))
    assert np.isfinite(out).all()
    assert np.all(out[1, 2] == 0.0) and np.any(out[1, 1] != 0.0)


def test_bfloat16_inputs_softmax_in_float32():
    q, k, v = _qkv()
    low = dot_product_attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)))
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), _reference(q, k, v, np.ones((1, 1, 1, 7), bool)),
                               atol=5e-2)


def test_module_is_logically_partitioned():
    module = MultiHeadAttention(num_heads=2, head_dim=4)
    x = jnp.ones((1, 3, 8))
    boxed = module.init(jax.random.key(0), x, x)["params"]
    names = {k: v["kernel"].names for k, v in boxed.items()}
    assert names == {"query": ("embed", "heads", "kv"), "key": ("embed", "heads", "kv"),
                     "value": ("embed", "heads", "kv"), "out": ("heads", "kv", "embed")}
    out = module.apply({"params": nn.unbox(boxed)}, x, x)
    assert out.shape == x.shape
