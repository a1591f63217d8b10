"""The masked transformer: shapes, text masking, sharding annotations, precision, learning."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from muse_jax import masking
from muse_jax.models.transformer import MaskedTransformer, grid_sincos_init

KW = dict(codebook_size=16, grid=(4, 4), width=32, depth=2, num_heads=4, mlp_dim=64)


def _inputs(seed=0, b=2, length=5, text_dim=12):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, 17, (b, 16)), jnp.int32)
    text = jnp.asarray(rng.standard_normal((b, length, text_dim)), jnp.float32)
    mask = jnp.asarray(np.arange(length)[None] < np.array([[3], [5]]))
    return tokens, text, mask


def _init(model, seed=0):
    boxed = model.init(jax.random.key(seed), *_inputs())["params"]
    return boxed, nn.unbox(boxed)


def test_logits_shape_and_dtype():
    model = MaskedTransformer(**KW)
    _, params = _init(model)
    logits = model.apply({"params": params}, *_inputs())
    assert logits.shape == (2, 16, 16) and logits.dtype == jnp.float32


TEXT_BLOCKS = dict(text_depth=1, text_length=5)


@pytest.mark.parametrize("extra", [{}, TEXT_BLOCKS], ids=["projection", "text_blocks"])
def test_padded_text_is_ignored_and_real_text_is_not(extra):
    """With text blocks too: their self-attention must not read the padding either."""
    model = MaskedTransformer(**KW, **extra)
    _, params = _init(model)
    tokens, text, mask = _inputs()
    base = model.apply({"params": params}, tokens, text, mask)
    padded = text.at[0, 4].set(50.0)  # example 0 has 3 real tokens
    np.testing.assert_allclose(model.apply({"params": params}, tokens, padded, mask), base, atol=1e-5)
    real = text.at[0, 1].set(50.0)
    assert not np.allclose(model.apply({"params": params}, tokens, real, mask)[0], base[0], atol=1e-3)


def test_every_weight_has_logical_axes():
    boxed, _ = _init(MaskedTransformer(**KW))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    assert all(len(x.names) == x.value.ndim for x in leaves)


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
    full = MaskedTransformer(**KW)
    half = MaskedTransformer(**KW, dtype=jnp.bfloat16)
    _, params = _init(full)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(_init(half)[0])))
    a = full.apply({"params": params}, *_inputs())
    b = half.apply({"params": params}, *_inputs())
    assert b.dtype == jnp.float32 and np.isfinite(np.asarray(b)).all()
    np.testing.assert_allclose(b, a, atol=0.15)


def test_remat_gives_the_same_gradients():
    tokens, text, mask = _inputs()
    plain, remat = MaskedTransformer(**KW), MaskedTransformer(**KW, remat=True)
    _, params = _init(plain)

    def grads(model):
        return jax.grad(lambda p: jnp.sum(model.apply({"params": p}, tokens, text, mask) ** 2))(params)

    for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(remat))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("patch", [1, 2])
def test_overfits_one_batch(patch):
    model = MaskedTransformer(**KW, patch=patch)
    _, params = _init(model)
    rng = np.random.default_rng(3)
    targets = jnp.asarray(rng.integers(0, 16, (4, 16)), jnp.int32)
    text = jnp.asarray(rng.standard_normal((4, 5, 12)), jnp.float32)
    text_mask = jnp.ones((4, 5), bool)
    mask = masking.random_mask(jax.random.key(0), 4, 16, 0.5)
    inputs = jnp.where(mask, model.mask_id, targets)
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        def loss_fn(p):
            return masking.masked_cross_entropy(model.apply({"params": p}, inputs, text, text_mask),
                                                targets, mask)[0]
        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(g, opt)
        return optax.apply_updates(params, updates), opt, loss

    losses = []
    for _ in range(40):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def test_param_tree_is_the_text_projection_and_the_trunk():
    """One tree for `__call__`, `encode_context` and `logits`: names and shapes."""
    _, params = _init(MaskedTransformer(**KW))
    assert set(params) == {"text", "trunk"}
    assert set(params["text"]) == {"norm", "proj"}
    assert set(params["trunk"]) == {"embed", "blocks_0", "blocks_1", "head"}
    assert set(params["trunk"]["embed"]) == {"token_embed", "pos_embed"}
    assert set(params["trunk"]["head"]) == {"norm", "logits"}
    assert set(params["trunk"]["blocks_0"]) == {
        "self_attention_norm", "cross_attention_norm", "mlp_norm", "self_attention",
        "cross_attention", "mlp_in", "mlp_out"}
    cross = params["trunk"]["blocks_0"]["cross_attention"]
    assert {k: v["kernel"].shape for k, v in cross.items()} == {
        "query": (32, 4, 8), "key": (32, 4, 8), "value": (32, 4, 8), "out": (4, 8, 32)}
    assert params["text"]["proj"]["kernel"].shape == (12, 32)


def test_text_blocks_mix_the_words_before_cross_attention():
    """Without text blocks a text position's keys depend on its own embedding alone; with them,
    on its neighbours' too (how a colour word reaches its position word)."""
    _, text, mask = _inputs()
    moved = text.at[1, 3].set(50.0)  # example 1: 5 real tokens
    for extra, mixes in (({}, False), (TEXT_BLOCKS, True)):
        model = MaskedTransformer(**KW, **extra)
        _, params = _init(model)

        def first_key(t):
            kv = model.apply({"params": params}, t, mask, method="encode_context")["kv"]  # noqa: B023
            return np.asarray(kv[0][0][1, 0])

        assert (not np.allclose(first_key(moved), first_key(text), atol=1e-4)) == mixes, extra
    assert set(_init(MaskedTransformer(**KW, **TEXT_BLOCKS))[1]) == {"text", "text_blocks", "trunk"}


def test_text_longer_than_the_text_blocks_is_refused():
    model = MaskedTransformer(**KW, **TEXT_BLOCKS)
    _, params = _init(model)
    tokens, text, _ = _inputs(length=6)
    with pytest.raises(ValueError, match="6 tokens.*built for 5"):
        model.apply({"params": params}, tokens, text, jnp.ones((2, 6), bool))


def test_precomputed_context_gives_the_same_logits():
    tokens, text, mask = _inputs()
    for model in (MaskedTransformer(**KW), MaskedTransformer(**KW, remat=True),
                  MaskedTransformer(**KW, **TEXT_BLOCKS)):
        _, params = _init(model)
        context_kv = model.apply({"params": params}, text, mask, method="encode_context")
        assert len(context_kv["kv"]) == KW["depth"]
        assert all(a.shape == (2, 5, 4, 8) for kv in context_kv["kv"] for a in kv)
        plain = model.apply({"params": params}, tokens, text, mask)
        cached = jax.jit(lambda p, t, c: model.apply({"params": p}, t, c, method="logits"))(  # noqa: B023
            params, tokens, context_kv)
        np.testing.assert_allclose(cached, plain, rtol=1e-5, atol=1e-5)


def test_sharded_init_places_the_attention_kernels_by_their_3d_logical_axes():
    """Under a mesh and the rules (train.py's init), the values of a plain init (up to float
    rounding: jit against eager), with the [embed, heads, kv] kernels split over fsdp and tensor."""
    from muse_jax import parallel
    model = MaskedTransformer(**KW)
    mesh = parallel.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params, shardings = parallel.create_sharded(
        lambda rng: model.init(rng, *_inputs())["params"], mesh, jax.random.key(0))
    query = ("trunk", "blocks_0", "cross_attention", "query", "kernel")
    spec = shardings
    for key in query:
        spec = spec[key]
    assert spec.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(_init(model)[1])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_sincos_grid_init_is_smooth_in_both_axes_and_keeps_the_tree():
    """Neighbours start nearer than far tokens (both axes), at the normal init's scale, in the
    same parameters as the normal init."""
    normal = _init(MaskedTransformer(**KW))[1]
    sincos = _init(MaskedTransformer(**KW, pos_init="sincos"))[1]
    assert jax.tree.map(jnp.shape, normal) == jax.tree.map(jnp.shape, sincos)
    pos = np.asarray(grid_sincos_init(None, (16, 16, 128)))
    assert 0.01 < pos.std() < 0.03
    dist = lambda a, b: np.linalg.norm(pos[a] - pos[b])  # noqa: E731
    assert dist((0, 0), (0, 1)) < dist((0, 0), (0, 8)) and dist((0, 0), (1, 0)) < dist((0, 0), (8, 0))
    assert dist((0, 0), (0, 8)) > 0 and dist((0, 0), (8, 0)) > 0
    rand = np.asarray(normal["trunk"]["embed"]["pos_embed"])
    assert np.linalg.norm(rand[0, 0] - rand[0, 1]) > 0.5 * np.linalg.norm(rand[0, 0] - rand[2, 2])


def test_a_patched_position_embeds_its_blocks_tokens_and_predicts_each_of_them():
    """patch 2 on a 4x4 grid: 4 positions; the embedding of a position is the sum of its 4
    tokens' rows, each from its place's own table, and grid cell (r, c) reads the logits of
    position (r // 2, c // 2), place (r % 2) * 2 + c % 2. Checked against numpy at depth 0,
    where the head reads the embeddings directly."""
    model = MaskedTransformer(**{**KW, "depth": 0}, patch=2)
    _, params = _init(model)
    tokens, text, mask = _inputs()
    logits = np.asarray(model.apply({"params": params}, tokens, text, mask))
    trunk = jax.tree.map(np.asarray, params["trunk"])
    table, pos = trunk["embed"]["token_embed"]["embedding"], trunk["embed"]["pos_embed"]
    head = trunk["head"]
    vocab, classes = 17, 16
    assert table.shape == (4 * vocab, 32) and pos.shape == (2, 2, 32)
    assert head["logits"]["kernel"].shape == (32, 4 * classes) and logits.shape == (2, 16, classes)
    grid = np.asarray(tokens).reshape(2, 4, 4)
    for b in range(2):
        for r in range(4):
            for c in range(4):
                pr, pc = r // 2, c // 2
                block = grid[b, 2 * pr:2 * pr + 2, 2 * pc:2 * pc + 2].reshape(4)
                x = table[np.arange(4) * vocab + block].sum(0) + pos[pr, pc]
                x = (x - x.mean()) / np.sqrt(x.var() + 1e-6) * head["norm"]["scale"] \
                    + head["norm"]["bias"]
                place = (r % 2) * 2 + c % 2
                kernel = head["logits"]["kernel"][:, place * classes:(place + 1) * classes]
                bias = head["logits"]["bias"][place * classes:(place + 1) * classes]
                np.testing.assert_allclose(logits[b, r * 4 + c], x @ kernel + bias,
                                           rtol=1e-5, atol=1e-5)


def test_a_patch_that_does_not_divide_the_grid_is_refused():
    model = MaskedTransformer(**KW, patch=3)
    with pytest.raises(ValueError, match="patch 3 does not divide the token grid"):
        _init(model)
