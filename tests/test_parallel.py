"""Mesh construction, the logical-axis rules, and sharded training equal to one device."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from muse_jax import config as config_lib
from muse_jax import parallel, tasks


def _mesh_config(data, fsdp, tensor):
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def test_mesh_shape_resolves_minus_one():
    assert parallel.mesh_shape(_mesh_config(-1, 2, 1), 8) == (4, 2, 1)
    assert parallel.mesh_shape(_mesh_config(2, 2, 2), 8) == (2, 2, 2)


@pytest.mark.parametrize("data,fsdp,tensor,message", [
    (-1, -1, 1, "at most one axis"),
    (3, -1, 1, "cannot be split"),
    (2, 2, 1, "needs 4 devices, but 8"),
    (0, 1, 1, "positive"),
])
def test_mesh_shape_errors(data, fsdp, tensor, message):
    with pytest.raises(parallel.ShardingError, match=message):
        parallel.mesh_shape(_mesh_config(data, fsdp, tensor), 8)


def test_batch_size_checks():
    mesh = parallel.create_mesh(_mesh_config(2, 2, 2))
    assert parallel.check_batch_size(8, mesh, 2) == 4
    with pytest.raises(parallel.ShardingError, match="data x fsdp = 4"):
        parallel.check_batch_size(6, mesh, 1)


def test_rules_shard_what_divides():
    mesh = parallel.create_mesh(_mesh_config(2, 2, 2))
    kernel = jax.ShapeDtypeStruct((3, 3, 3, 16), jnp.float32)
    import flax.linen as nn
    boxed = nn.LogicallyPartitioned(kernel, (None, None, "conv_in", "conv_out"))
    sharding = parallel.logical_shardings({"k": boxed}, mesh)["k"]
    # 3 input channels cannot split over fsdp=2: that axis is dropped, tensor still applies.
    assert sharding.spec == jax.sharding.PartitionSpec(None, None, None, "tensor")


def _tiny_config(**gan):
    c = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    c.gan.enabled = True
    c.gan.start_step = 1
    c.gan.channels = 8
    c.gan.num_layers = 2
    c.gan.lecam = 0.01
    return c


def _run_steps(config, mesh, batches):
    task = tasks.create(config)
    state, shardings = parallel.create_sharded(task.init_state, mesh, jax.random.key(0))
    batch_sharding = parallel.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    step = jax.jit(task.load(mesh).train_step, in_shardings=(shardings, batch_sharding, replicated, replicated),
                   out_shardings=(shardings, replicated), donate_argnums=0)
    losses = []
    for i, images in enumerate(batches):
        batch = parallel.global_batch({"image": images}, batch_sharding)
        state, metrics = step(state, batch, jax.random.key(i), {})
        losses.append({k: float(metrics[k]) for k in ("loss", "disc_loss", "grad_norm")})
    return state, shardings, losses


@pytest.mark.slow
def test_2x2x2_mesh_matches_one_device():
    assert jax.device_count() == 8
    config = _tiny_config()
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (8, 64, 64, 3)).astype(np.float32) for _ in range(3)]

    mesh8 = parallel.create_mesh(_mesh_config(2, 2, 2))
    state8, shardings8, losses8 = _run_steps(config, mesh8, batches)
    mesh1 = parallel.create_mesh(_mesh_config(1, 1, 1), devices=jax.devices()[:1])
    state1, _, losses1 = _run_steps(config, mesh1, batches)

    # The 8-device run really is sharded: some weights are split over fsdp and tensor.
    specs = {tuple(s.spec) for s in jax.tree.leaves(shardings8.params)}
    assert any("fsdp" in spec for spec in specs) and any("tensor" in spec for spec in specs)
    assert losses8[-1]["disc_loss"] != 0.0  # the GAN branch ran too
    for a, b in zip(losses8, losses1):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
