"""The Flax U-ViT against diffusers' UVit2DModel (aMUSEd's transformer), small random configs.

Every weight is perturbed away from its init (diffusers zero-inits the global response norms,
which would hide a wrong mapping of them), the model saved with `save_pretrained` and its
safetensors file read back, so the parameter mapping is the one a real checkpoint takes.
"""
import numpy as np
import pytest
import torch
import diffusers
import flax.linen as nn
import jax
import jax.numpy as jnp
from safetensors.numpy import load_file

from muse_jax.models import uvit

TINY = dict(hidden_size=32, cond_embed_dim=16, micro_cond_encode_dim=8, micro_cond_embed_dim=40,
            encoder_hidden_size=24, vocab_size=40, codebook_size=32, in_channels=16,
            block_out_channels=24, num_res_blocks=2, block_num_heads=2, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=48, sample_size=8)


def perturbed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def inputs(config, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    h = config["sample_size"]
    tokens = rng.integers(0, config["codebook_size"], (batch, h * h))
    tokens[rng.random(tokens.shape) < 0.5] = config["vocab_size"] - 1  # [MASK]
    text = rng.normal(size=(batch, 7, config["encoder_hidden_size"])).astype(np.float32)
    pooled = rng.normal(size=(batch, config["cond_embed_dim"])).astype(np.float32)
    micro = np.tile(np.array([[256, 256, 0, 0, 6]], np.float32), (batch, 1))
    micro[1] = [512, 384, 16, 32, 5.5]
    return tokens.astype(np.int32), text, pooled, micro


def reference(model, tokens, text, pooled, micro, h):
    with torch.no_grad():
        out = model(torch.from_numpy(tokens).long().reshape(len(tokens), h, h),
                    torch.from_numpy(text), torch.from_numpy(pooled), torch.from_numpy(micro))
    return out.permute(0, 2, 3, 1).reshape(len(tokens), h * h, -1).numpy()  # [B, h*w, K]


def run(module, params, tokens, text, pooled, micro):
    @jax.jit
    def fn(params, tokens, text, pooled, micro):
        context = module.apply({"params": params}, text, pooled, micro, method="condition")
        return module.apply({"params": params}, tokens, context, method="logits")
    return np.asarray(fn(params, tokens, text, pooled, micro))


def packed(args):
    """(tokens, text with the pooled embedding as its last position): Muse's model interface."""
    tokens, text, pooled, _ = args
    pooled = np.pad(pooled, ((0, 0), (0, text.shape[-1] - pooled.shape[-1])))
    return jnp.asarray(tokens), jnp.asarray(np.concatenate([text, pooled[:, None]], axis=1))


def convert(hf_config, weights):
    """(UVitConfig, params) from diffusers' config and {name: array} of its weights."""
    config = uvit.UVitConfig.from_diffusers(hf_config)
    return config, uvit.params_from_diffusers(lambda name: weights[name], config)


def load(path):
    return convert(diffusers.UVit2DModel.load_config(path),
                   load_file(str(path / "diffusion_pytorch_model.safetensors")))


@pytest.mark.parametrize("resample", [False, True], ids=["amused-256-like", "amused-512-like"])
def test_uvit_logits_match_diffusers(tmp_path, resample):
    torch.manual_seed(0)
    cfg = {**TINY, "downsample": resample, "upsample": resample}
    model = perturbed(diffusers.UVit2DModel(**cfg))
    model.save_pretrained(tmp_path)
    config, params = load(tmp_path)
    module = uvit.UVit2D(config)
    args = inputs(cfg)
    ours = run(module, params, *args)
    ref = reference(model, *args, cfg["sample_size"])
    diff, scale = np.abs(ours - ref).max(), np.abs(ref).max()
    print(f"U-ViT logits ({'with' if resample else 'no'} resampling): max abs diff {diff:.3g} "
          f"(logits up to {scale:.3g})")
    assert diff < 1e-4
    assert module.mask_id == cfg["vocab_size"] - 1
    init = module.init(jax.random.key(0), *packed(args))["params"]
    assert jax.tree.structure(params) == jax.tree.structure(nn.unbox(init))  # every weight mapped


@pytest.mark.slow
def test_uvit_at_amused_256_size_matches_diffusers():
    """diffusers' UVit2DModel defaults are aMUSEd-256's transformer (603M parameters).

    The weights go over in memory: the file round trip is the tiny models' (above) and
    test_amused_import's; at this size save_pretrained wrote 2.4 GB of float32 in 17 s of the
    test's 49 s (2026-12-05)."""
    torch.manual_seed(0)
    model = diffusers.UVit2DModel(sample_size=16).eval()
    cfg = dict(model.config)
    args = inputs(cfg, batch=2)
    ref = reference(model, *args, 16)
    weights = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    del model
    config, params = convert(cfg, weights)
    assert config == uvit.UVitConfig()  # the defaults here are aMUSEd-256's too
    ours = run(uvit.UVit2D(config), params, *args)
    diff = np.abs(ours - ref).max()
    print(f"U-ViT at aMUSEd-256 size: max abs logit diff {diff:.3g} (logits up to {np.abs(ref).max():.3g})")
    assert diff < 1e-4


def test_every_uvit_parameter_has_logical_axis_names():
    config = uvit.UVitConfig.from_diffusers({**TINY, "downsample": True, "upsample": True})
    boxed = jax.eval_shape(uvit.UVit2D(config).init, jax.random.key(0), *packed(inputs(TINY)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim
                          for x in leaves)
