"""Multi-axis self-attention over a 2D token grid (Zhao et al. 2021, "Improved Transformer for
High-Resolution GANs", as used by Muse's super-resolution model, section 2.4; MaxViT's block and
grid attention are the same two patterns).

Dense attention over the 64x64 = 4096 high-resolution tokens costs 4096^2 scores per head.
Multi-axis attention splits the heads in two halves instead:
- block (local) heads: the grid is cut into non-overlapping `window` x `window` blocks, and each
  token attends to the tokens of its own block;
- grid (dilated) heads: the grid is cut into a `window` x `window` lattice of strided tokens
  (stride = side / window), and each token attends to the tokens of its own lattice, which
  spread over the whole image.
Each query then scores window^2 keys, not h*w (64 rather than 4096 at window 8), and two
layers connect any two tokens (block then grid). Both halves run in one layer, as in Zhao et
al.; MaxViT stacks them in consecutive layers instead.

`block_mask` and `grid_mask` give the same patterns as dense [N, N] masks: `dot_product_attention`
with them over all tokens equals `multi_axis_attention` (tests/test_multi_axis.py), and the
benchmark (benchmarks/sr_attention.py) compares the two.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from muse_jax.models.attention import dot_product_attention


def _check(grid: Sequence[int], window: int, num_heads: int) -> None:
    h, w = grid
    if window < 1 or h % window or w % window:
        raise ValueError(f"attention window {window} must divide the token grid {h}x{w}")
    if num_heads % 2:
        raise ValueError(f"multi-axis attention splits the heads in half; got {num_heads} heads")


def _to_blocks(x, grid, window):
    """[B, h*w, H, D] -> [B * blocks, window^2, H, D]: contiguous window x window blocks."""
    b, _, heads, dim = x.shape
    h, w = grid
    x = x.reshape(b, h // window, window, w // window, window, heads, dim)
    x = x.transpose(0, 1, 3, 2, 4, 5, 6)
    return x.reshape(-1, window * window, heads, dim)


def _from_blocks(x, batch, grid, window):
    h, w = grid
    heads, dim = x.shape[-2:]
    x = x.reshape(batch, h // window, w // window, window, window, heads, dim)
    return x.transpose(0, 1, 3, 2, 4, 5, 6).reshape(batch, h * w, heads, dim)


def _to_lattices(x, grid, window):
    """[B, h*w, H, D] -> [B * lattices, window^2, H, D]: tokens h/window (w/window) apart.

    Row i = outer * (h / window) + inner; a lattice is the tokens sharing (inner row, inner col).
    """
    b, _, heads, dim = x.shape
    h, w = grid
    x = x.reshape(b, window, h // window, window, w // window, heads, dim)
    x = x.transpose(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(-1, window * window, heads, dim)


def _from_lattices(x, batch, grid, window):
    h, w = grid
    heads, dim = x.shape[-2:]
    x = x.reshape(batch, h // window, w // window, window, window, heads, dim)
    return x.transpose(0, 3, 1, 4, 2, 5, 6).reshape(batch, h * w, heads, dim)


def multi_axis_attention(q, k, v, grid: Sequence[int], window: int):
    """Self-attention of q, k, v [B, h*w, H, D] (row-major over the `grid` h x w): the first H/2
    heads within `window` x `window` blocks, the other H/2 within strided lattices."""
    _check(grid, window, q.shape[2])
    batch, half = q.shape[0], q.shape[2] // 2
    local = [_to_blocks(t[:, :, :half], grid, window) for t in (q, k, v)]
    dilated = [_to_lattices(t[:, :, half:], grid, window) for t in (q, k, v)]
    out_local = _from_blocks(dot_product_attention(*local), batch, grid, window)
    out_dilated = _from_lattices(dot_product_attention(*dilated), batch, grid, window)
    return jnp.concatenate([out_local, out_dilated], axis=2)


def block_mask(grid: Sequence[int], window: int) -> np.ndarray:
    """bool [h*w, h*w]: True where two tokens share a window x window block."""
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    same = lambda a, n: (a[:, None] // n) == (a[None, :] // n)  # noqa: E731
    return same(rows, window) & same(cols, window)


def grid_mask(grid: Sequence[int], window: int) -> np.ndarray:
    """bool [h*w, h*w]: True where two tokens share a lattice (equal row mod h/window, col mod
    w/window)."""
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    same = lambda a, n: (a[:, None] % n) == (a[None, :] % n)  # noqa: E731
    return same(rows, grid[0] // window) & same(cols, grid[1] // window)


def dense_multi_axis_mask(grid: Sequence[int], window: int, num_heads: int) -> np.ndarray:
    """bool [H, h*w, h*w]: the block mask for the first H/2 heads, the grid mask for the rest;
    `dot_product_attention(q, k, v, mask[None])` computes what `multi_axis_attention` does."""
    _check(grid, window, num_heads)
    half = num_heads // 2
    block, lattice = block_mask(grid, window), grid_mask(grid, window)
    return np.concatenate([np.broadcast_to(block, (half, *block.shape)),
                           np.broadcast_to(lattice, (half, *lattice.shape))])


@dataclasses.dataclass(frozen=True)
class MultiAxis:
    """`multi_axis_attention` over `grid` with `window`, as the `attention_fn` of a
    `MultiHeadAttention` (frozen, so hashable: a module field). Self-attention only: the high-
    resolution tokens have no padding, so there is no mask to apply."""
    grid: tuple[int, int]
    window: int

    def __call__(self, q, k, v, mask=None):
        if mask is not None:
            raise ValueError("multi-axis attention takes no mask")
        return multi_axis_attention(q, k, v, self.grid, self.window)
