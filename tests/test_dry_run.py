"""The dry-run planner: grouped parameter rows, per-device bytes, activations, a mesh to use."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from muse_jax import config as config_lib
from muse_jax import masking, plan
from muse_jax.models.transformer import MaskedTransformer


def test_numbered_modules_group_into_one_row():
    params = {"block_0": 1, "block_10": 1, "block_1": 1, "block_2": 1, "final_norm": 1,
              "norm1": 1, "logits": 1}
    rows = plan.group_params(params)
    assert rows[0] == ("block_0..block_10", ["block_0", "block_1", "block_2", "block_10"])
    assert ("norm1", ["norm1"]) in rows and ("final_norm", ["final_norm"]) in rows


def test_a_trunk_shows_its_parts_and_its_blocks_in_one_row():
    params = {"text": {"proj": 1}, "trunk": {"embed": 1, "blocks_0": 1, "blocks_1": 1, "head": 1}}
    assert plan.group_params(params) == [
        ("text", ["text"]), ("trunk/embed", ["trunk/embed"]),
        ("trunk/blocks_0..trunk/blocks_1", ["trunk/blocks_0", "trunk/blocks_1"]),
        ("trunk/head", ["trunk/head"])]


@pytest.fixture(scope="module")
def paper_base():
    config = config_lib.load_file(config_lib.CONFIG_DIR / "base_256.py")
    config.mesh.fsdp = 8
    config.mesh.data = 1
    return config, plan.plan(config, jax.devices(), memory_gib=24)


@pytest.mark.slow  # the paper-scale plan takes ~15 s on 2 cores
def test_paper_base_report_on_8_devices(paper_base):
    config, report = paper_base
    assert jax.device_count() == 8
    total = report["params"]["total"]
    assert 0.6e9 < total < 0.7e9
    d, m = config.model.width, config.model.mlp_dim
    per_block = report["params"]["trunk/blocks_0..trunk/blocks_23"] / 24  # self- and cross-attention, MLP
    assert abs(per_block - (8 * d * d + 2 * d * m)) < 1e-3 * per_block
    parts = report["per_device_bytes"]
    # fsdp=8 splits the f32 weights eight ways (a few small vectors stay whole).
    assert 4 * total / 8 <= parts["params"] < 1.05 * 4 * total / 8
    assert parts["ema_params"] == parts["params"] == report["gradients"]
    # Muse's T5-XXL, assumed for a 4096-wide T5 without a path: 4.7B bf16 parameters over fsdp.
    assert 4.5e9 * 2 / 8 < parts["text_encoder"] < 5e9 * 2 / 8
    assert report["activations"] > 0
    assert report["total"] == sum(v for k, v in parts.items()
                                  if k not in ("whole_state", "optimizer_state")) + \
        report["gradients"] + report["activations"]


@pytest.mark.slow  # the paper-scale plan takes ~15 s on 2 cores
def test_recommended_mesh_is_the_least_sharded_that_fits(paper_base):
    _, report = paper_base
    best = report["candidates"][0]
    assert report["recommended_mesh"] == {k: best[k] for k in ("data", "fsdp", "tensor")}
    assert best["fits"] and best["total"] <= 0.8 * 24 * 2 ** 30
    pure = [c for c in report["candidates"] if c["tensor"] == 1]
    assert all(not c["fits"] for c in pure if c["fsdp"] < best["fsdp"])
    # 64 examples a device (512 over 8) and T5-XXL whole need more than 24 GiB.
    assert best["fsdp"] > 1


@pytest.mark.slow  # the paper-scale plan takes ~15 s on 2 cores
def test_table_names_the_rows_and_the_mesh_to_use(paper_base):
    _, report = paper_base
    table = plan.format_table(report, "configs/base_256.py")
    assert "trunk/blocks_0..trunk/blocks_23 (24 x 26.23M)" in table
    assert "frozen text encoder (T5-XXL assumed)" in table
    assert "activations: analytic" in table
    m = report["recommended_mesh"]
    assert f"use: --config.mesh.data={m['data']} --config.mesh.fsdp={m['fsdp']}" in table
    assert table.count("blocks_") == 2  # one row for the 24 blocks


def test_activation_estimate_is_near_xla_for_a_small_model():
    """Against XLA:CPU's temporary buffers for the gradient of a small model (no remat)."""
    b, n, length, width, mlp, heads, depth, vocab = 8, 256, 32, 128, 512, 4, 4, 256
    model = MaskedTransformer(codebook_size=vocab, grid=(16, 16), width=width, depth=depth,
                              num_heads=heads, mlp_dim=mlp)
    tokens, emb = jnp.zeros((b, n), jnp.int32), jnp.zeros((b, length, 384))
    mask = jnp.ones((b, length), bool)
    params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), tokens[:1], emb[:1],
                                                        mask[:1])["params"]))

    def loss(p):
        logits = model.apply({"params": p}, tokens, emb, mask)
        return masking.masked_cross_entropy(logits, tokens, jnp.ones_like(tokens, bool))[0]

    measured = jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes
    estimate = plan.transformer_activation_bytes(
        batch=b, tokens=n, width=width, mlp=mlp, heads=heads, depth=depth, span=n,
        context=length, vocab=vocab, dtype_bytes=4, remat=False, dropout=False)
    assert 0.5 < estimate / measured < 2.0, (estimate, measured)
    remat = plan.transformer_activation_bytes(
        batch=b, tokens=n, width=width, mlp=mlp, heads=heads, depth=depth, span=n,
        context=length, vocab=vocab, dtype_bytes=4, remat=True, dropout=False)
    assert remat < estimate / 2
