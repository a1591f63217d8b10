"""FID Inception in Flax against pytorch-fid's InceptionV3, random weights loaded into both."""
import numpy as np
import pytest
import torch

from conftest import one_device_mesh
from muse_jax.models import inception
from muse_jax.quality import scorers
from torch_refs import import_torchvision


def _pytorch_fid_inception(monkeypatch):
    """pytorch-fid's FID InceptionV3 with random weights, built without its download.

    `fid_inception_v3` fetches the FID weights from GitHub and loads them; here the fetch
    returns nothing and the load is skipped, leaving the random init. BatchNorm statistics are
    then measured on a random batch, so every layer's activations stay O(1) through the 94
    convolutions (with the default mean 0 / var 1 they shrink or blow up and the comparison
    would say little), and the BN scales and shifts are random.
    """
    import_torchvision()
    from pytorch_fid import inception as fid

    monkeypatch.setattr(fid, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda self, state, *a, **k: None)
    torch.manual_seed(0)
    model = fid.InceptionV3([3])
    monkeypatch.undo()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # the running stats become the batch's own
            m.reset_running_stats()
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 128, 128))
    return model.eval()


@pytest.mark.slow
def test_features_match_pytorch_fid(monkeypatch):
    """Parity in float64 (both sides), where rounding cannot hide a wrong layer, and in float32
    against that float64 reference: a random Inception amplifies rounding, so torch's own
    float32 run is off by ~1e-3; ours must be no further off than torch's own."""
    import jax

    model = _pytorch_fid_inception(monkeypatch)
    params = inception.params_from_state_dict(_torchvision_names(model))
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 1, (2, 96, 96, 3)).astype(np.float32)
    torch_pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    with torch.no_grad():
        theirs32 = model(torch_pixels)[0].reshape(2, -1).numpy()
        theirs = model.double()(torch_pixels.double())[0].reshape(2, -1).numpy()
    ours32 = np.asarray(inception.FIDInceptionV3().apply({"params": params}, pixels * 2 - 1))
    with jax.enable_x64():
        params64 = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
        ours = np.asarray(inception.FIDInceptionV3(dtype=np.float64).apply(
            {"params": params64}, pixels.astype(np.float64) * 2 - 1))
    assert ours.shape == (2, inception.FEATURES) and ours.dtype == np.float64
    assert theirs.std() > 0.1  # features far from constant, so the match means something
    err, err32, torch_err32 = (np.max(np.abs(a - theirs)) for a in (ours, ours32, theirs32))
    print(f"Inception pool3 vs pytorch-fid (float64): max |diff| {err:.2e}; float32: ours "
          f"{err32:.2e}, pytorch-fid's own {torch_err32:.2e} (features' std {theirs.std():.2f})")
    assert err < 1e-4
    assert err32 < 1.5 * torch_err32


def _torchvision_names(model):
    """pytorch-fid's `blocks.I.J.*` state dict under the FID Inception's own module names
    (`Conv2d_1a_3x3.*`, `Mixed_5b.*`), the names of the pt_inception .pth file."""
    order = [["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"],
             ["Conv2d_3b_1x1", "Conv2d_4a_3x3"],
             ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
              "Mixed_6e"],
             ["Mixed_7a", "Mixed_7b", "Mixed_7c"]]
    out = {}
    for name, value in model.state_dict().items():
        _, i, j, rest = name.split(".", 3)
        out[f"{order[int(i)][int(j)]}.{rest}"] = value.numpy()
    return out


def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05") as e:
        inception.load_params(str(tmp_path / "pt_inception.pth"))
    assert "\n" not in str(e.value)
    from safetensors.numpy import save_file
    save_file({"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), np.float32)},
              str(tmp_path / "part.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        inception.load_params(str(tmp_path / "part.safetensors"))


def test_random_inception_is_seeded_he_normal_with_identity_batchnorms():
    """`--inception_weights=random`: kernels of He's variance (2 / fan-in), so features keep
    their scale through the ReLUs, BatchNorms the identity, the same weights for the same seed."""
    a, b, c = (scorers.inception_random(seed, one_device_mesh()).weights for seed in (0, 0, 1))
    kernel = np.asarray(a["Mixed_7c"]["branch3x3dbl_1"]["kernel"])  # 1x1, 2048 -> 448
    assert kernel.shape == (1, 1, 2048, 448)
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / 2048), rtol=0.01)
    assert abs(kernel.mean()) < 5 * kernel.std() / np.sqrt(kernel.size)  # 5 standard errors
    bn = a["Mixed_7c"]["branch3x3dbl_1"]
    for name, value in (("scale", 1.0), ("var", 1.0), ("bias", 0.0), ("mean", 0.0)):
        np.testing.assert_array_equal(np.asarray(bn[name]), np.full(448, value, np.float32))
    first = lambda w: np.asarray(w["Conv2d_1a_3x3"]["kernel"])  # noqa: E731
    np.testing.assert_array_equal(first(a), first(b))
    assert not np.allclose(first(a), first(c))
