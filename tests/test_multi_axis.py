"""Multi-axis attention equals dense attention under the block and grid masks it stands for."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax.models import multi_axis
from muse_jax.models.attention import MultiHeadAttention, dot_product_attention

# One compilation a call rather than one per primitive, as eager mode would.
multi_axis_attention = jax.jit(multi_axis.multi_axis_attention, static_argnums=(3, 4))
dense_attention = jax.jit(dot_product_attention)


@pytest.mark.parametrize("grid,window", [((8, 8), 4), ((8, 8), 2), ((12, 8), 4), ((16, 16), 4)])
def test_equals_dense_attention_with_block_and_grid_masks(grid, window):
    heads, dim = 4, 8
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, grid[0] * grid[1], heads, dim))
    fast = multi_axis_attention(q, k, v, grid, window)
    mask = multi_axis.dense_multi_axis_mask(grid, window, heads)
    dense = dense_attention(q, k, v, jnp.asarray(mask)[None])
    np.testing.assert_allclose(fast, dense, atol=1e-5, rtol=1e-5)
    # Not vacuous: plain dense attention (no masks) gives something else.
    assert float(jnp.max(jnp.abs(fast - dense_attention(q, k, v)))) > 1e-2


def test_masks_are_the_blocks_and_strided_lattices():
    grid, window = (8, 8), 4
    block, lattice = multi_axis.block_mask(grid, window), multi_axis.grid_mask(grid, window)
    assert block.sum(1).tolist() == [16] * 64 and lattice.sum(1).tolist() == [16] * 64
    token = lambda r, c: r * 8 + c  # noqa: E731
    assert block[token(0, 0), token(3, 3)] and not block[token(0, 0), token(0, 4)]
    # Lattice stride is 8 / 4 = 2: (0,0) sees (2,6) and (6,2), not its neighbour (0,1).
    assert lattice[token(0, 0), token(2, 6)] and lattice[token(0, 0), token(6, 2)]
    assert not lattice[token(0, 0), token(0, 1)]
    # Together the two halves reach every token within two layers.
    assert ((block.astype(int) @ lattice.astype(int)) > 0).all()


def test_each_query_only_sees_its_block_or_lattice():
    """Changing one key moves the block half of the outputs inside its block only, and the grid
    half inside its lattice only."""
    grid, window, heads = (8, 8), 4, 2
    q, k, v = jax.random.normal(jax.random.key(1), (3, 1, 64, heads, 4))
    out = multi_axis_attention(q, k, v, grid, window)
    changed = multi_axis_attention(q, k, v.at[:, 9].add(1.0), grid, window)
    moved = np.asarray(jnp.abs(changed - out).max(-1) > 1e-6)[0]  # [tokens, heads]
    np.testing.assert_array_equal(moved[:, 0], multi_axis.block_mask(grid, window)[9])
    np.testing.assert_array_equal(moved[:, 1], multi_axis.grid_mask(grid, window)[9])


def test_as_the_attention_fn_of_a_module_with_the_same_parameters():
    grid, window = (8, 8), 4
    x = jax.random.normal(jax.random.key(2), (2, 64, 32))
    dense = MultiHeadAttention(4, 8)
    fast = MultiHeadAttention(4, 8, attention_fn=multi_axis.MultiAxis(grid, window))
    params = dense.init(jax.random.key(3), x, x)
    specs = nn.get_partition_spec(params)["params"]
    assert specs["query"]["kernel"] == jax.sharding.PartitionSpec("embed", "heads", "kv")
    mask = jnp.asarray(multi_axis.dense_multi_axis_mask(grid, window, 4))[None]
    np.testing.assert_allclose(jax.jit(fast.apply)(params, x, x),
                               jax.jit(dense.apply)(params, x, x, mask), atol=1e-5, rtol=1e-5)


def test_bad_windows():
    q = jnp.zeros((1, 64, 4, 8))
    with pytest.raises(ValueError, match="must divide"):
        multi_axis.multi_axis_attention(q, q, q, (8, 8), 3)
    with pytest.raises(ValueError, match="splits the heads"):
        multi_axis.multi_axis_attention(q[:, :, :3], q[:, :, :3], q[:, :, :3], (8, 8), 4)
