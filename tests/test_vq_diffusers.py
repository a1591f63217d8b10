"""The diffusers VQ family against diffusers' VQModel (aMUSEd's VQ-GAN), small random configs.

Encoding must give exactly diffusers' token ids (its quantiser's argmin over Euclidean
distances); decoding from ids (`lookup_from_codebook`, as aMUSEd decodes) the same pixels in
float32. Weights are perturbed from their init and read back from `save_pretrained`'s file.
"""
import numpy as np
import pytest
import torch
import diffusers
import flax.linen as nn
import jax
from safetensors.numpy import load_file

from muse_jax.models import vq_diffusers

TINY = dict(block_out_channels=[8, 16, 16], down_block_types=["DownEncoderBlock2D"] * 3,
            up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=2, latent_channels=6,
            num_vq_embeddings=32, norm_num_groups=4, lookup_from_codebook=True, force_upcast=True)


def perturbed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def load(path):
    config = vq_diffusers.VQModelConfig.from_diffusers(diffusers.VQModel.load_config(path))
    weights = load_file(str(path / "diffusion_pytorch_model.safetensors"))
    return config, vq_diffusers.params_from_diffusers(lambda name: weights[name], config)


def reference(model, images01):
    """diffusers' tokens and decoded pixels, as aMUSEd's pipelines call VQModel."""
    with torch.no_grad():
        x = torch.from_numpy(images01).permute(0, 3, 1, 2)
        latents = model.encode(x).latents
        _, _, (_, _, ids) = model.quantize(latents)
        b, _, h, w = latents.shape
        ids = ids.reshape(b, h, w)
        pixels = model.decode(ids, force_not_quantize=True,
                              shape=(b, h, w, model.config.latent_channels)).sample
    return ids.numpy(), pixels.permute(0, 2, 3, 1).numpy()


def check(tmp_path, cfg, size, batch=2):
    torch.manual_seed(0)
    model = perturbed(diffusers.VQModel(**cfg))
    model.save_pretrained(tmp_path)
    images01 = np.random.default_rng(0).random((batch, size, size, 3), dtype=np.float32)
    ref_ids, ref_pixels = reference(model, images01)
    del model
    config, params = load(tmp_path)
    vq = vq_diffusers.DiffusersVQ(config)
    ids = np.asarray(jax.jit(lambda p, x: vq.apply({"params": p}, x, method=vq.encode))(
        params, images01 * 2 - 1))
    pixels = np.asarray(jax.jit(lambda p, i: vq.apply({"params": p}, i, method=vq.decode_raw))(
        params, ref_ids.astype(np.int32)))
    return vq, params, ids, ref_ids, np.abs(pixels - ref_pixels).max(), images01


def test_vq_tokens_exact_and_pixels_match_diffusers(tmp_path):
    """With the mid-block attention aMUSEd leaves out, so its mapping is checked too."""
    vq, params, ids, ref_ids, diff, images01 = check(
        tmp_path, {**TINY, "mid_block_add_attention": True}, 32)
    print(f"VQModel (mid attention): {np.mean(ids == ref_ids):.0%} "
          f"of {ids.size} tokens equal, decoded pixels max abs diff {diff:.3g}")
    np.testing.assert_array_equal(ids, ref_ids)
    assert diff < 1e-4
    assert vq.downsample_factor == 4 and vq.codebook_size == 32
    assert len(np.unique(ref_ids)) > 3  # the comparison is over several codes, not one
    init = jax.eval_shape(vq.init, jax.random.key(0), images01)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(nn.unbox(init))
    leaves = jax.tree.leaves(init, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)


@pytest.mark.slow
def test_vq_at_amused_size_matches_diffusers(tmp_path):
    """aMUSEd's vqvae/: blocks [128, 256, 256, 512, 768], f=16, 64 latent channels, 8192 codes."""
    cfg = dict(block_out_channels=[128, 256, 256, 512, 768], down_block_types=["DownEncoderBlock2D"] * 5,
               up_block_types=["UpDecoderBlock2D"] * 5, layers_per_block=2, latent_channels=64,
               num_vq_embeddings=8192, norm_num_groups=32, mid_block_add_attention=False,
               lookup_from_codebook=True, force_upcast=True)
    _, _, ids, ref_ids, diff, _ = check(tmp_path, cfg, 64, batch=1)
    print(f"VQModel at aMUSEd size: {np.mean(ids == ref_ids):.1%} of tokens equal, "
          f"pixels max abs diff {diff:.3g}")
    np.testing.assert_array_equal(ids, ref_ids)
    assert diff < 1e-4
