"""The optimisers' weight decay and Adafactor's recipe, pinned to the numbers they must give."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from muse_jax import config as config_lib
from muse_jax import optimizers


def _optim(name: str, **overrides) -> ml_collections.ConfigDict:
    optim = config_lib.reference("base").optim
    optim.name = name
    optim.warmup_steps = 100
    for key, value in overrides.items():
        optim[key] = value
    return optim


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
@pytest.mark.parametrize("scale", [False, True])
def test_zero_gradients_shrink_weights_by_the_product_of_one_minus_lr_times_wd(name, scale):
    """100 warm-up steps at the paper's wd 0.045 and lr 1e-4 leave 99.98% of each weight
    (optax.adafactor's own decay left 1%: 0.955^100)."""
    optim = _optim(name, multiply_by_parameter_scale=scale, grad_clip=0.0)
    steps = 100
    tx = optimizers.create(optim, num_steps=1000)
    lr = optimizers.learning_rate(optim, 1000)
    params = {"w": jnp.full((256, 128), 0.5), "b": jnp.full((128,), -2.0)}
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(zeros, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    expected = np.prod([1.0 - float(lr(t)) * optim.weight_decay for t in range(steps)])
    np.testing.assert_allclose(params["w"], 0.5 * expected, rtol=1e-6)
    np.testing.assert_allclose(params["b"], -2.0 * expected, rtol=1e-6)
    assert expected > 0.9997  # the warm-up's lr is tiny: weights must barely move


def test_optax_adafactor_decay_is_what_the_paper_recipe_must_not_do():
    """The bug the recipe fixes, kept visible: optax.adafactor's decay ignores the schedule."""
    lr = optimizers.learning_rate(_optim("adafactor"), 1000)
    tx = optax.adafactor(lr, weight_decay_rate=0.045)
    params = {"w": jnp.full((256, 128), 0.5)}
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(100):
        updates, state = tx.update(zeros, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["w"], 0.5 * 0.955 ** 100, rtol=1e-4)


def test_adafactor_momentum_and_second_moment_decay_are_the_configured_ones():
    """One weight, gradient g then 0: the update of step 2 is b1 * (step 1's normalised
    update) (momentum), and the factored second moment decays with the capped b2."""
    b1, b2, lr = 0.9, 0.96, 1e-2
    tx = optimizers.adafactor(optax.constant_schedule(lr), b1=b1, b2=b2, weight_decay=0.0,
                              multiply_by_parameter_scale=False)
    params = jnp.zeros((4,))
    state = tx.init(params)
    g = jnp.array([1.0, -1.0, 2.0, -2.0])
    u1, state = tx.update(g, state, params)
    # Step 1: decay 1 - 1^-0.8 = 0, so v = g^2 and the normalised update is sign(g); RMS 1
    # passes the clipping; momentum (not debiased) keeps (1 - b1) of it.
    np.testing.assert_allclose(u1, -lr * (1 - b1) * np.sign(g), rtol=1e-5)
    u2, state = tx.update(jnp.zeros(4), state, params)
    np.testing.assert_allclose(u2, b1 * u1, rtol=1e-5)
    # Many steps later the second-moment decay is the constant b2.
    v = state[0].v
    for _ in range(200):
        _, state = tx.update(g, state, params)
    v_prev = state[0].v
    _, state = tx.update(jnp.zeros(4), state, params)
    np.testing.assert_allclose(state[0].v, b2 * v_prev + (1 - b2) * 1e-30, rtol=1e-5)
    assert not np.allclose(v, v_prev)


@pytest.mark.parametrize("span,last", [(1.0, 0.0), (2.0, 0.537)])
def test_cosine_span_sets_where_the_cosine_reaches_zero(span, last):
    """A 1100-step run, 100 of warm-up: at its last step the lr is 0 with span 1; with span 2
    the cosine spans 2100 steps and is 1000/2100 of the way down, 0.537 x the peak."""
    optim = _optim("adamw", cosine_span=span)
    lr = optimizers.learning_rate(optim, 1100)
    decay_steps = round(1100 * span) - 100
    expected = optim.lr * 0.5 * (1 + np.cos(np.pi * min(1000 / decay_steps, 1.0)))
    np.testing.assert_allclose(float(lr(1100)), expected, rtol=1e-5, atol=1e-12)
    assert abs(float(lr(1100)) - last * optim.lr) < 0.001 * optim.lr
    np.testing.assert_allclose(float(lr(100)), optim.lr, rtol=1e-6)  # the peak, either way


@pytest.mark.parametrize("span", [0.0, -1.0, float("nan")])
def test_a_bad_cosine_span_is_one_line(span):
    config = config_lib.reference("base")
    config.optim.cosine_span = span
    with pytest.raises(config_lib.ConfigError, match="optim.cosine_span must be finite and > 0"):
        config_lib.check_values(config)
