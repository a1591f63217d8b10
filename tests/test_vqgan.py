"""VQGAN model and task: shapes, straight-through VQ, losses, perceptual, GAN, fine-tuning."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import one_device_mesh
from muse_jax import config as config_lib
from muse_jax import tasks
from muse_jax.config import ConfigError
from muse_jax.models import perceptual
from muse_jax.models.vqgan import VQGAN, VectorQuantizer

KW = dict(channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, norm_groups=4,
          codebook_size=32, code_dim=4)


def _images(n=2, size=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)), jnp.float32)


def _tiny(**overrides):
    c = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    c.data.image_size = 32
    for key, value in overrides.items():
        block, name = key.split(".")
        c[block][name] = value
    return c


@pytest.fixture(scope="module")
def model_and_params():
    model = VQGAN(**KW)
    params = model.init(jax.random.key(0), _images())["params"]
    return model, nn.unbox(params)


def test_encode_decode_shapes(model_and_params):
    model, params = model_and_params
    images = _images()
    ids = model.apply({"params": params}, images, method=VQGAN.encode)
    assert ids.shape == (2, 8, 8) and ids.dtype == jnp.int32
    assert int(ids.min()) >= 0 and int(ids.max()) < KW["codebook_size"]
    decoded = model.apply({"params": params}, ids, method=VQGAN.decode)
    assert decoded.shape == images.shape and decoded.dtype == jnp.float32
    recon, ids2, _ = model.apply({"params": params}, images)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_allclose(recon, decoded, atol=1e-5)


def test_quantizer_forward_is_a_code_and_gradient_goes_straight_through():
    vq = VectorQuantizer(codebook_size=16, code_dim=4)
    z = jax.random.normal(jax.random.key(1), (2, 3, 3, 4))
    params = nn.unbox(vq.init(jax.random.key(0), z)["params"])
    z_q, ids, _ = vq.apply({"params": params}, z)
    codes = vq.apply({"params": params}, method=VectorQuantizer.normalized_codebook)
    np.testing.assert_allclose(z_q, codes[ids], atol=1e-6)
    # Straight-through: d sum(w * z_q) / dz equals the gradient through the l2 normalisation.
    w = jax.random.normal(jax.random.key(2), z.shape)
    g_vq = jax.grad(lambda z: jnp.sum(w * vq.apply({"params": params}, z)[0]))(z)
    g_id = jax.grad(lambda z: jnp.sum(w * z / jnp.linalg.norm(z, axis=-1, keepdims=True)))(z)
    np.testing.assert_allclose(g_vq, g_id, atol=1e-4)


def test_codebook_and_commitment_losses_pull_the_right_way():
    vq = VectorQuantizer(codebook_size=16, code_dim=4)
    z = jax.random.normal(jax.random.key(1), (2, 3, 3, 4))
    params = nn.unbox(vq.init(jax.random.key(0), z)["params"])

    def loss(params, z, name):
        return vq.apply({"params": params}, z)[2][name]

    # The codebook loss moves codes, never encodings; the commitment loss the reverse.
    assert float(jnp.abs(jax.grad(loss, 1)(params, z, "codebook_loss")).max()) == 0.0
    assert float(jnp.abs(jax.grad(loss, 0)(params, z, "codebook_loss")["codebook"]).max()) > 0.0
    assert float(jnp.abs(jax.grad(loss, 0)(params, z, "commitment_loss")["codebook"]).max()) == 0.0
    assert float(jnp.abs(jax.grad(loss, 1)(params, z, "commitment_loss")).max()) > 0.0


def test_usage_and_perplexity_statistics():
    task = tasks.create(_tiny())
    k = task.config.model.codebook_size
    uniform = task.summarize_eval({"psnr_sum": 60.0, "count": 2.0, "code_counts": np.ones(k)})
    assert uniform["eval_codebook_usage"] == 1.0
    assert uniform["eval_perplexity"] == pytest.approx(k)
    assert uniform["eval_psnr"] == 30.0
    one = np.zeros(k)
    one[3] = 10
    collapsed = task.summarize_eval({"psnr_sum": 0.0, "count": 1.0, "code_counts": one})
    assert collapsed["eval_codebook_usage"] == 1 / k and collapsed["eval_perplexity"] == pytest.approx(1)


def _random_lpips_file(path):
    rng = np.random.default_rng(0)
    widths = (64, 128, 256, 512, 512)
    tensors, cin = {}, 3
    for block, width in zip(perceptual.VGG16_BLOCKS, widths):
        for i in block:
            tensors[f"features.{i}.weight"] = (rng.standard_normal((width, cin, 3, 3)) *
                                               np.sqrt(2 / (9 * cin))).astype(np.float32)
            tensors[f"features.{i}.bias"] = np.zeros(width, np.float32)
            cin = width
    for k, width in enumerate(widths):
        tensors[f"lin{k}.model.1.weight"] = np.abs(rng.standard_normal((1, width, 1, 1))).astype(np.float32)
    save_file(tensors, str(path))


def test_lpips_is_a_distance(tmp_path):
    path = tmp_path / "lpips.safetensors"
    _random_lpips_file(path)
    weights = perceptual.load_weights(str(path))
    x, y = _images(seed=1), _images(seed=2)
    same = perceptual.lpips(weights, x, x)
    diff = perceptual.lpips(weights, x, y)
    assert same.shape == (2,) and float(jnp.max(same)) == 0.0
    assert float(jnp.min(diff)) > 0.0
    np.testing.assert_allclose(diff, perceptual.lpips(weights, y, x), rtol=1e-5)


def test_perceptual_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="features.N.weight"):
        perceptual.load_weights(str(tmp_path / "none.safetensors"))
    save_file({"features.0.weight": np.zeros((1, 1, 1, 1), np.float32)}, str(tmp_path / "part.safetensors"))
    with pytest.raises(ValueError, match="lacks"):
        perceptual.load_weights(str(tmp_path / "part.safetensors"))
    task = tasks.create(_tiny(**{"loss.perceptual": 0.1,
                                 "loss.perceptual_weights": str(tmp_path / "none.safetensors")}))
    with pytest.raises(ConfigError, match="not found"):
        task.load(None)


def _steps(task, n, images, frozen=None):
    state = nn.unbox(task.init_state(jax.random.key(0)))
    step = jax.jit(task.load(one_device_mesh()).train_step)
    history = []
    for i in range(n):
        state, metrics = step(state, {"image": images}, jax.random.key(i), frozen or {})
        history.append(jax.device_get(metrics))
    return state, history


def test_train_step_with_perceptual_loss(tmp_path):
    path = tmp_path / "lpips.safetensors"
    _random_lpips_file(path)
    task = tasks.create(_tiny(**{"loss.perceptual": 0.1, "loss.perceptual_weights": str(path)}))
    frozen = {"perceptual": perceptual.load_weights(str(path))}
    _, history = _steps(task, 2, _images(4), frozen)
    assert history[0]["perceptual"] > 0 and np.isfinite(history[-1]["loss"])


def test_discriminator_starts_at_its_step():
    task = tasks.create(_tiny(**{"gan.enabled": True, "gan.start_step": 2, "gan.channels": 8,
                                 "gan.num_layers": 2}))
    init = nn.unbox(task.init_state(jax.random.key(0)))
    state, history = _steps(task, 4, _images(4))
    assert [h["disc_loss"] == 0.0 for h in history] == [True, True, False, False]
    assert history[2]["gan_g"] != 0.0
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.disc_params, init.disc_params)
    assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize("norm", ["group", "channel"])
def test_channel_norm_makes_tokens_local(norm):
    """A change in one corner reaches the far corner's encodings through GroupNorm's image-wide
    statistics, and not at all with the per-position norm (the convolutions reach ~26 px)."""
    model = VQGAN(**KW, norm=norm)
    images = _images(1, size=64)
    params = nn.unbox(model.init(jax.random.key(0), images)["params"])
    changed = images.at[:, 48:, 48:].set(1.0)
    encode = lambda x: model.apply({"params": params}, x, method=lambda m, x: m.encoder(x))  # noqa: E731
    difference = np.abs(np.asarray(encode(changed) - encode(images)))
    far, near = difference[:, :2, :2], difference[:, -2:, -2:]  # the top-left and changed 8 px
    assert near.max() > 1e-2
    if norm == "channel":
        assert far.max() == 0.0
    else:
        assert far.max() > 1e-3


def test_unknown_norm_is_a_config_error():
    with pytest.raises(ConfigError, match="model.norm must be one of group, channel, got 'batch'"):
        tasks.create(_tiny(**{"model.norm": "batch"})).check_config()
