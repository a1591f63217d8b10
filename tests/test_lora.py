"""LoRA adapters (models/lora.py) on the base and SR transformers: zero at the start, the
delta they add equals the factored path x A B, selected by path, sharded by logical axes."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax import parallel
from muse_jax.models import lora
from muse_jax.models.attention import MultiHeadAttention
from muse_jax.models.transformer import MaskedTransformer, SuperResTransformer

QKVO = ("query", "key", "value", "out")


def _base_model():
    model = MaskedTransformer(codebook_size=16, grid=(4, 4), width=32, depth=2, num_heads=4,
                              mlp_dim=64)
    tokens = jnp.zeros((2, 16), jnp.int32)
    text = jax.random.normal(jax.random.key(1), (2, 5, 12))
    mask = jnp.ones((2, 5), bool)
    boxed = model.init(jax.random.key(0), tokens, text, mask)["params"]
    return model, boxed, (tokens.at[:, 3].set(7), text, mask)


def _randomise_b(adapters, seed=3):
    flat = flax.traverse_util.flatten_dict(adapters)
    rng = np.random.default_rng(seed)
    return flax.traverse_util.unflatten_dict(
        {k: jnp.asarray(rng.normal(0, 0.2, v.shape), jnp.float32) if k[-1] == "lora_b" else v
         for k, v in flat.items()})


def test_fresh_adapters_leave_the_model_exactly_as_it_was():
    model, boxed, inputs = _base_model()
    params = nn.unbox(boxed)
    adapters = nn.unbox(lora.init(jax.random.key(2), boxed, lora.TRANSFORMER_TARGETS, QKVO, 4))
    adapted = lora.apply(params, adapters, lora.scale(8.0, 4))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(adapted)):
        np.testing.assert_array_equal(a, b)  # bit for bit: B is zero
    np.testing.assert_array_equal(model.apply({"params": params}, *inputs),
                                  model.apply({"params": adapted}, *inputs))


def test_adapter_delta_equals_the_factored_path_on_every_kind_of_projection():
    """x (W + s A B) == x W + s (x A) B for q/k/v ([embed, heads, kv]), out ([heads, kv, embed])."""
    attention = MultiHeadAttention(num_heads=2, head_dim=8, out_features=16)
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    boxed = attention.init(jax.random.key(1), x, x)["params"]
    targets = {"q": (r"^query/kernel$", 1), "o": (r"^out/kernel$", 2)}
    adapters = _randomise_b(nn.unbox(lora.init(jax.random.key(2), boxed, targets, ("q", "o"), 3)))
    params, s = nn.unbox(boxed), 0.7
    adapted = lora.apply(params, adapters, s)
    q_a, q_b = adapters["query"]["lora_a"], adapters["query"]["lora_b"]
    factored = (jnp.einsum("bld,dhk->blhk", x, params["query"]["kernel"])
                + s * jnp.einsum("blr,rhk->blhk", x @ q_a, q_b))
    merged = jnp.einsum("bld,dhk->blhk", x, adapted["query"]["kernel"])
    np.testing.assert_allclose(merged, factored, atol=1e-5)
    h = jax.random.normal(jax.random.key(4), (2, 5, 2, 8))
    o_a, o_b = adapters["out"]["lora_a"], adapters["out"]["lora_b"]
    factored = (jnp.einsum("blhk,hkd->bld", h, params["out"]["kernel"])
                + s * jnp.einsum("blhk,hkr,rd->bld", h, o_a, o_b))
    merged = jnp.einsum("blhk,hkd->bld", h, adapted["out"]["kernel"])
    np.testing.assert_allclose(merged, factored, atol=1e-5)
    assert not np.allclose(merged, jnp.einsum("blhk,hkd->bld", h, params["out"]["kernel"]))
    # Untargeted kernels are the model's own.
    np.testing.assert_array_equal(adapted["key"]["kernel"], params["key"]["kernel"])


def test_targets_select_attention_by_default_and_mlp_on_request():
    _, boxed, _ = _base_model()
    attention = lora.select(boxed, lora.TRANSFORMER_TARGETS, QKVO)
    # 2 blocks x (self + cross) x (q, k, v, out); the text projection is not a target.
    assert len(attention) == 16
    assert all(p[-2] in QKVO and p[-3] in ("self_attention", "cross_attention") for p in attention)
    assert {attention[p] for p in attention if p[-2] == "out"} == {2}
    with_mlp = lora.select(boxed, lora.TRANSFORMER_TARGETS, QKVO + ("mlp_in", "mlp_out"))
    assert len(with_mlp) == 16 + 4
    with pytest.raises(ValueError, match="unknown LoRA target"):
        lora.select(boxed, lora.TRANSFORMER_TARGETS, ("to_q",))


def test_sr_model_adapters_cover_both_trunks():
    model = SuperResTransformer(codebook_size=16, grid=(8, 8), low_res_codebook_size=16,
                                low_res_grid=(4, 4), width=32, depth=1, low_res_depth=1,
                                num_heads=4, mlp_dim=64, window=4)
    boxed = model.init(jax.random.key(0), jnp.zeros((1, 64), jnp.int32), jnp.zeros((1, 3, 12)),
                       jnp.ones((1, 3), bool), jnp.zeros((1, 16), jnp.int32))["params"]
    chosen = lora.select(boxed, lora.TRANSFORMER_TARGETS, QKVO)
    # High-res block: self + cross attention; low-res encoder block: self-attention only.
    assert len(chosen) == 4 * 2 + 4 and {p[0] for p in chosen} == {"trunk", "low_res"}


def test_adapters_carry_logical_axes_and_shard_by_the_rules_table():
    _, boxed, _ = _base_model()
    adapters = lora.init(jax.random.key(2), boxed, lora.TRANSFORMER_TARGETS, QKVO, 4)
    query = adapters["trunk"]["blocks_0"]["self_attention"]["query"]
    out = adapters["trunk"]["blocks_0"]["self_attention"]["out"]
    assert query["lora_a"].names == ("embed", lora.RANK_AXIS)
    assert query["lora_b"].names == (lora.RANK_AXIS, "heads", "kv")
    assert out["lora_a"].names == ("heads", "kv", lora.RANK_AXIS)
    assert out["lora_b"].names == (lora.RANK_AXIS, "embed")
    mesh = parallel.create_mesh({"data": 1, "fsdp": 4, "tensor": 2}, jax.devices()[:8])
    shardings = parallel.logical_shardings(adapters, mesh)
    spec = shardings["trunk"]["blocks_0"]["self_attention"]["query"]
    assert spec["lora_a"].spec == jax.sharding.PartitionSpec("fsdp", None)
    assert spec["lora_b"].spec == jax.sharding.PartitionSpec(None, "tensor", None)


def test_rank_dropout_is_rescaled_and_off_at_zero():
    _, boxed, _ = _base_model()
    params = nn.unbox(boxed)
    adapters = _randomise_b(nn.unbox(lora.init(jax.random.key(2), boxed,
                                               lora.TRANSFORMER_TARGETS, ("query",), 64)))
    path = ("trunk", "blocks_0", "self_attention", "query", "kernel")
    get = lambda tree: flax.traverse_util.flatten_dict(tree)[path]  # noqa: E731
    clean = get(lora.apply(params, adapters, 1.0)) - get(params)
    dropped = [get(lora.apply(params, adapters, 1.0, 0.5, jax.random.key(i))) - get(params)
               for i in range(200)]
    assert not np.allclose(dropped[0], clean)
    # Rescaled by 1 / (1 - p): on average the delta is the undropped one.
    np.testing.assert_allclose(np.mean(dropped, axis=0), clean, atol=0.15 * np.abs(clean).max())


def test_uvit_targets_are_chosen_by_model_kind_and_select_its_attention():
    import ml_collections

    from muse_jax.config import ConfigError
    from muse_jax.models import uvit
    from muse_jax.tasks import finetune

    net = uvit.UVitConfig(hidden_size=32, cond_embed_dim=32, micro_cond_encode_dim=8,
                          micro_cond_embed_dim=40, encoder_hidden_size=32, vocab_size=40,
                          codebook_size=32, in_channels=16, block_out_channels=24,
                          num_res_blocks=2, block_num_heads=2, num_hidden_layers=3,
                          num_attention_heads=4, intermediate_size=48, sample_size=4)
    boxed = uvit.params_shape(uvit.UVit2D(net))
    config = lambda kind: ml_collections.ConfigDict({"model": {"kind": kind}})  # noqa: E731
    table = finetune.targets(config("uvit"))
    assert table is lora.UVIT_TARGETS
    assert finetune.targets(config("muse")) is lora.TRANSFORMER_TARGETS
    chosen = lora.select(boxed, table, QKVO)
    # 3 layers x (self + cross) + down and up blocks x 2 pairs x 2 cross-attentions, x q/k/v/out.
    assert len(chosen) == (3 * 2 + 2 * 2 * 2) * 4
    assert {p[-3] for p in chosen} == {"attn1", "attn2"}
    assert {chosen[p] for p in chosen if p[-2] == "out"} == {2} and \
        {chosen[p] for p in chosen if p[-2] != "out"} == {1}
    mlp = lora.select(boxed, table, ("mlp_in", "mlp_out"))
    assert sorted(p[-2] for p in mlp) == ["ff_in"] * 3 + ["ff_out"] * 3  # the layers' GEGLU only
    adapters = lora.init(jax.random.key(0), boxed, table, QKVO, 2)
    assert adapters["layers_0"]["attn1"]["out"]["lora_a"].names == ("heads", "kv", lora.RANK_AXIS)
    with pytest.raises(ConfigError, match="model.kind 'diffusers' has no LoRA targets"):
        finetune.targets(config("diffusers"))
