"""Checkpoint checksums: numpy's sums of arrays in host memory are the device program's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax import checksums, parallel


def _arrays():
    rng = np.random.default_rng(0)
    mesh = parallel.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    spec = jax.sharding.PartitionSpec("fsdp", "tensor")
    sharded = jax.device_put(rng.normal(size=(8, 6)).astype(np.float32),
                             jax.sharding.NamedSharding(mesh, spec))
    return {
        "f32": jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.float32),
        "bf16": jnp.asarray(rng.normal(size=(33,)), jnp.bfloat16),
        "i32": jnp.asarray(rng.integers(-2**31, 2**31 - 1, size=(4, 4)), jnp.int32),
        "u8": jnp.asarray(rng.integers(0, 255, size=(9,)), jnp.uint8),
        "bool": jnp.asarray(rng.random(size=(5,)) < 0.5),
        "scalar": jnp.float32(3.5),
        "key": jax.random.key(7),
        "sharded": sharded,
        "nan": jnp.array([1.0, jnp.nan], jnp.float32),
        "numpy_f64": np.linspace(0.0, 1.0, 11),  # jit takes it as float32 (no x64)
        "python_int": 12345,
    }


@pytest.mark.parametrize("name", list(_arrays()))
def test_host_sums_are_the_device_sums(name):
    leaf = _arrays()[name]
    assert checksums._on_host(leaf)  # the simulated CPU devices' arrays are in host memory
    device = [int(v) if v.dtype != jnp.bool_ else bool(v)
              for v in jax.device_get(checksums._sums_compiled()(leaf))]
    host = checksums._host_sums(leaf)
    assert [int(host[0]), int(host[1]), host[2]] == device
    assert host[2] is (name != "nan")


def test_one_flipped_bit_changes_the_first_sum():
    x = np.arange(1000, dtype=np.float32)
    before = checksums._host_sums(x)
    flipped = x.copy()
    flipped.view(np.uint32)[417] ^= 1 << 9
    after = checksums._host_sums(flipped)
    assert after[0] != before[0] and after[1] != before[1]
